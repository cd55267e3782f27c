"""What one attention module costs: parameters, FLOPs, and the elementwise work FLOP counters skip.

``torch.utils.flop_counter.FlopCounterMode`` counts only matrix products and convolutions
(2 FLOPs per multiply-accumulate) and nothing else: not the bias of a conv or linear, not a
pooling, a sigmoid, a softmax, a norm or the final ``x * gate``. For attention modules that is
most of the work (SimAM's FLOPs are 0 for that counter), so :func:`attention_cost` also runs the
module under a dispatch mode that sees every ATen op and counts the rest by these rules:

* pointwise ops (ATen ``Tag.pointwise`` — add, mul, sigmoid, ... — and activations such as
  hardswish and silu that lack the tag): 1 per output element,
  whatever the function (a sigmoid is 1, not the 4 of exp/add/div);
* reductions (``Tag.reduction``: mean, sum, amax, ...): 1 per input element;
* pooling ops: 1 per input element;
* the bias of a convolution / addmm / baddbmm: 1 per output element;
* matrix-vector products (``mv``, ``dot``), which FlopCounterMode has no formula for: 2 per
  matrix element;
* row sums by ``embedding_bag`` (bags of rows added up): 1 per summed element, 2 with
  per-sample weights (multiply and add);
* softmax: 5 per element (max, subtract, exp, sum, divide);
* a norm that computes statistics (group norm, batch norm in training): 5 per element
  (sum, subtract-square, sum, then scale and shift); batch norm in eval: 2 per element;
* data movement and index construction (views, cat, copies, dtype casts, gathers, arange,
  ``nonzero``, ``bincount``, integer ``cumsum``, scalar read-backs): 0; a floating-point
  ``cumsum`` is 1 per element.

Any other op is listed in ``AttentionCost.uncounted`` instead of being guessed; the built-in
modules have none (a test checks it). Costs are for one forward in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from .registry import create_attention

__all__ = ["AttentionCost", "attention_cost", "count_elementwise"]

aten = torch.ops.aten

_BIASED = {aten.convolution, aten._convolution, aten.addmm, aten.baddbmm}
_POOL = {
    aten.avg_pool2d, aten.max_pool2d_with_indices, aten.adaptive_avg_pool2d, aten._adaptive_avg_pool2d,
    aten.adaptive_max_pool2d, aten.avg_pool1d, aten.max_pool2d, aten.adaptive_avg_pool1d,
}
# activations that ATen does not tag as pointwise but are
_POINTWISE_EXTRA = {
    aten.hardswish, aten.hardswish_, aten.silu, aten.silu_, aten.gelu, aten.relu6, aten.hardtanh,
    aten.hardtanh_, aten.mish, aten.elu, aten.leaky_relu, aten.softplus,
}
# products FlopCounterMode has no formula for: 2 per element of the matrix (multiply + add)
_MATVEC = {aten.mv, aten.dot, aten.vdot}
_BAG_SUM = {aten._embedding_bag_forward_only, aten._embedding_bag, aten.embedding_bag}
_INDEX_BUILD = {aten.nonzero, aten.bincount}
_SOFTMAX = {aten._softmax, aten._log_softmax, aten.softmax, aten.log_softmax}
_NORM_WITH_STATS = {
    aten.native_group_norm, aten.native_batch_norm, aten._native_batch_norm_legit,
    aten._native_batch_norm_legit_functional, aten.native_layer_norm,
}
_NORM_NO_STATS = {aten._native_batch_norm_legit_no_training}
_MOVE = {
    aten.cat, aten.stack, aten.clone, aten._to_copy, aten.copy_, aten.contiguous, aten.empty_like,
    aten.zeros_like, aten.ones_like, aten.empty, aten.empty_strided, aten.lift_fresh, aten.detach, aten.split, aten.split_with_sizes,
    aten.constant_pad_nd, aten._unsafe_view, aten.alias, aten.index_select, aten.gather, aten.index,
    aten.arange, aten.zeros, aten.full, aten.new_zeros, aten.new_empty, aten.scalar_tensor, aten.repeat,
    aten.new_ones, aten.new_full, aten.ones, aten.full_like,
    aten._local_scalar_dense,  # reading a scalar back (e.g. a finiteness check), no arithmetic
}


def _numel(t: object) -> int:
    return t.numel() if isinstance(t, torch.Tensor) else 0


def _first_tensor(args: tuple) -> torch.Tensor | None:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    return None


class _ElementwiseCounter(TorchDispatchMode):
    """Counts, per the module docstring's rules, what FlopCounterMode ignores."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.uncounted: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func.overloadpacket
        first = _first_tensor(args)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        out_n = _numel(outs[0])
        if packet in flop_registry:
            if packet in _BIASED:
                # the bias is args[2] for convolution and the added matrix args[0] for addmm
                has_bias = args[2] is not None if packet in (aten.convolution, aten._convolution) else True
                self.ops += out_n if has_bias else 0
        elif torch.Tag.pointwise in func.tags or packet in _POINTWISE_EXTRA:
            self.ops += out_n
        elif torch.Tag.reduction in func.tags or packet in _POOL:
            self.ops += _numel(first)
        elif packet in _MATVEC:
            self.ops += 2 * _numel(first)
        elif packet in _BAG_SUM:
            weight, indices = args[0], args[1]
            weighted = (len(args) > 6 and args[6] is not None) or kwargs.get("per_sample_weights") is not None
            self.ops += _numel(indices) * (weight.shape[1] if weight.dim() == 2 else 1) * (2 if weighted else 1)
        elif packet == aten.cumsum:
            self.ops += _numel(first) if first is not None and first.is_floating_point() else 0
        elif packet in _INDEX_BUILD:
            pass
        elif packet in _SOFTMAX:
            self.ops += 5 * out_n
        elif packet in _NORM_WITH_STATS:
            self.ops += 5 * out_n
        elif packet in _NORM_NO_STATS:
            self.ops += 2 * out_n
        elif func.is_view or packet in _MOVE:
            pass
        else:
            self.uncounted.add(str(packet))
        return out


@dataclass(frozen=True)
class AttentionCost:
    """Cost of one attention module for one (1, C, H, W) input, eval mode.

    Attributes:
        name, channels, hw: what was measured.
        params: number of parameters (buffers such as BN running stats not included).
        flops: FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` (convs and matrix
            products, 2 per multiply-accumulate).
        elementwise: the other ops, counted by the rules of :mod:`mlca.attention.cost`.
        uncounted: ATen ops that neither count covers (empty for the built-in modules).
    """

    name: str
    channels: int
    hw: tuple[int, int]
    params: int
    flops: int
    elementwise: int
    uncounted: tuple[str, ...] = ()

    @property
    def total_ops(self) -> int:
        """``flops + elementwise``."""
        return self.flops + self.elementwise


def count_elementwise(module: torch.nn.Module, x: torch.Tensor) -> tuple[int, int, tuple[str, ...]]:
    """Run ``module(x)`` once without grad; return (FlopCounterMode FLOPs, elementwise ops, uncounted ops)."""
    counter = _ElementwiseCounter()
    with torch.no_grad(), FlopCounterMode(display=False) as flops, counter:
        module(x)
    return flops.get_total_flops(), counter.ops, tuple(sorted(counter.uncounted))


def attention_cost(name: str, channels: int, hw: int | tuple[int, int], **kwargs) -> AttentionCost:
    """Parameters, FLOPs and elementwise ops of ``create_attention(name, channels, **kwargs)``
    applied to one ``(1, channels, H, W)`` input (``hw`` is ``H`` or ``(H, W)``), in eval mode.

    Example: ``attention_cost("se", 256, 40)``.
    """
    h, w = (hw, hw) if isinstance(hw, int) else tuple(hw)
    if h < 1 or w < 1 or channels < 1:
        raise ValueError(f"attention_cost needs channels >= 1 and H, W >= 1, got C={channels}, hw={hw!r}")
    module = create_attention(name, channels, **kwargs).eval()
    params = sum(p.numel() for p in module.parameters())
    x = torch.randn(1, channels, h, w)
    flops, elementwise, uncounted = count_elementwise(module, x)
    return AttentionCost(name, channels, (h, w), params, flops, elementwise, uncounted)
