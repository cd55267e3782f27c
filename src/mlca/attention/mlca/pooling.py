"""Adaptive average pooling along one axis, and its adjoint, as exact banded gathers.

``F.adaptive_avg_pool2d(x, (m, n))`` is separable: along an axis of length ``n_in`` it maps to
``n_out`` bins ``[floor(i*n_in/n_out), ceil((i+1)*n_in/n_out))`` and averages each. That is a fixed
banded linear map per (n_in, n_out), so MLCA expresses it without calling adaptive pooling:

- it is *exact* (same bins, same sum-then-divide), also when bins overlap (n_in not a multiple of
  n_out) and when n_in < n_out (upsampling repeats/averages rows);
- it is built only from ``arange``, integer floor-division and comparisons on the sizes, so it
  traces symbolically under ``torch.compile(dynamic=True)`` and ``torch.onnx.export(dynamo=True)``
  with dynamic H/W (ONNX: Range, Div, Less, Gather, Where, ReduceSum), and scripts with TorchScript;
- it gathers the (at most ``K``) members of each bin and zeroes the padding with ``masked_fill``
  rather than multiplying by a 0/1 matrix, because ``0 * nan = nan`` and ``0 * inf = nan`` would
  leak a non-finite value into bins that do not contain it. NaN/Inf therefore land exactly where
  adaptive pooling puts them.

The adjoint (needed by the hand-written backward) of the pooling ``A_{n->m}`` (m x n) is the
(n x m) matrix whose row j has its non-zeros at the bins that contain j, which are exactly the bins
of the opposite direction ``m -> n``: ``[floor(j*m/n), ceil((j+1)*m/n))``; the weights are
``1/len`` of the *column's* bin in the ``n -> m`` direction.
"""

from __future__ import annotations

from typing import Callable, Dict, Hashable, Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "adaptive_bins", "adaptive_mean", "adaptive_mean_adjoint", "bag_grow", "bag_shrink",
    "cached_bags", "cached_bins", "cached_full", "cached_pool_matrix", "matrix_grow",
    "matrix_shrink", "pool_matrix",
]


def _bin_edges(n_in: int, n_out: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    """(n_out,) int64 ``start`` and ``end`` of the bins ``[floor(i n_in / n_out),
    ceil((i + 1) n_in / n_out))`` of adaptive pooling from ``n_in`` to ``n_out``."""
    i = torch.arange(n_out, device=device)
    start = torch.div(i * n_in, n_out, rounding_mode="floor")
    end = torch.div((i + 1) * n_in + (n_out - 1), n_out, rounding_mode="floor")
    return start, end


def adaptive_bins(n_in: int, n_out: int, device: torch.device) -> Tuple[Tensor, Tensor, Tensor]:
    """The bins of adaptive pooling from ``n_in`` to ``n_out`` as a padded gather table.

    Returns:
        idx: int64 (n_out, K), the input positions of each bin, padded by repeating a valid index.
        valid: bool (n_out, K), which entries of ``idx`` belong to the bin.
        length: int64 (n_out,), the number of positions in each bin (always >= 1).

    ``K = ceil(n_in / n_out) + 1`` bounds every bin length without looking at the data, so the
    table's shape is a closed-form expression of the sizes (symbolic under dynamic shapes).
    """
    start, end = _bin_edges(n_in, n_out, device)
    k = (n_in + n_out - 1) // n_out + 1
    idx = start.unsqueeze(1) + torch.arange(k, device=device).unsqueeze(0)
    valid = idx < end.unsqueeze(1)
    idx = torch.clamp(idx, max=n_in - 1)
    return idx, valid, end - start


_CACHE: Dict[Tuple[int, int, str], Tuple[Tensor, Tensor, Tensor]] = {}
_CACHE_MAX = 256


@torch.jit.unused
def _memo(cache: dict, key: Hashable, build: Callable[[], object]):
    """``cache[key]``, built on a miss; the cache is emptied when it reaches ``_CACHE_MAX``
    entries (bounded: the image sizes of a sweep are finite but unknown)."""
    hit = cache.get(key)
    if hit is None:
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        hit = cache[key] = build()
    return hit


@torch.jit.unused
def cached_bins(n_in: int, n_out: int, device: torch.device) -> Tuple[Tensor, Tensor, Tensor]:
    """``adaptive_bins`` memoised per (sizes, device) for eager mode (tables are tiny).

    Not for use under tracing/compiling: there the sizes may be symbolic and the table must be
    part of the graph.
    """
    if torch.compiler.is_compiling():  # symbolic sizes: the table belongs in the graph
        return adaptive_bins(n_in, n_out, device)
    return _memo(_CACHE, (n_in, n_out, str(device)), lambda: adaptive_bins(n_in, n_out, device))


def _gather_sum(x: Tensor, dim: int, idx: Tensor, valid: Tensor, weight: Tensor) -> Tensor:
    """``sum_k where(valid, x[idx] * weight, 0)`` along ``dim`` (2 or 3) of a 4-D tensor.

    x: (B, C, H, W); idx, valid, weight: (n_out, K) -> (B, C, n_out, W) or (B, C, H, n_out).
    """
    n_out = idx.shape[0]
    k = idx.shape[1]
    sel = x.index_select(dim, idx.reshape(-1))
    b, c = x.shape[0], x.shape[1]
    if dim == 2:
        sel = sel.reshape(b, c, n_out, k, x.shape[3])
        sel = (sel * weight.unsqueeze(-1)).masked_fill(~valid.unsqueeze(-1), 0.0)
        return sel.sum(3)
    sel = sel.reshape(b, c, x.shape[2], n_out, k)
    sel = (sel * weight).masked_fill(~valid, 0.0)
    return sel.sum(4)


def adaptive_mean(
    x: Tensor, dim: int, n_out: int, bins: Optional[Tuple[Tensor, Tensor, Tensor]] = None
) -> Tensor:
    """Adaptive average pooling of a 4-D tensor along ``dim`` (2: H, 3: W) to ``n_out``.

    Equals ``F.adaptive_avg_pool2d`` restricted to one axis. x: (B, C, H, W).
    ``bins`` may pass a precomputed ``adaptive_bins(x.shape[dim], n_out)`` table.
    """
    if bins is None:
        bins = adaptive_bins(x.shape[dim], n_out, x.device)
    idx, valid, length = bins
    weight = (1.0 / length.to(x.dtype)).unsqueeze(1).expand(idx.shape)
    return _gather_sum(x, dim, idx, valid, weight)


def adaptive_mean_adjoint(
    y: Tensor, dim: int, n_out: int, bins: Optional[Tuple[Tensor, Tensor, Tensor]] = None,
    fwd_length: Optional[Tensor] = None,
) -> Tensor:
    """The adjoint (transpose) of ``adaptive_mean(., dim, y.shape[dim])`` from size ``n_out``.

    y: (B, C, m, W) or (B, C, H, m) -> the same with ``n_out`` along ``dim``. ``bins`` may pass
    ``adaptive_bins(m, n_out)`` (the sparsity) and ``fwd_length`` the bin lengths of the forward
    direction ``adaptive_bins(n_out, m)[2]`` (the weights).
    """
    m = y.shape[dim]
    if bins is None:
        bins = adaptive_bins(m, n_out, y.device)
    if fwd_length is None:
        fwd_length = adaptive_bins(n_out, m, y.device)[2]
    idx, valid, _ = bins
    weight = (1.0 / fwd_length.to(y.dtype))[idx]
    return _gather_sum(y, dim, idx, valid, weight)


_DENSE_CACHE: Dict[Tuple[int, int, str, torch.dtype], Tensor] = {}


def pool_matrix(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The (n_out, n_in) matrix of adaptive average pooling along one axis, from the sizes.

    Row i holds ``1 / len_i`` on bin i = [floor(i n_in / n_out), ceil((i + 1) n_in / n_out)).
    Built from ``arange`` and comparisons only, so it also traces with symbolic sizes (export).
    """
    start, end = _bin_edges(n_in, n_out, device)
    start, end = start.unsqueeze(1), end.unsqueeze(1)
    r = torch.arange(n_in, device=device).unsqueeze(0)
    member = (r >= start) & (r < end)
    return member.to(dtype) / (end - start).to(dtype)


@torch.jit.unused
def cached_pool_matrix(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The dense (n_out, n_in) matrix of adaptive average pooling along one axis (eager only).

    Row i holds ``1/len_i`` on the members of bin i. ``M @ v`` pools a vector; ``M.T`` is the
    adjoint. Used by the eager Function for sizes that are not multiples of ``local_size``: a
    BLAS product with these tiny matrices beats the banded gathers several-fold on small feature
    maps. Because ``0 * nan = nan``, a product spreads a non-finite value over its whole plane;
    callers check the (small) result and fall back to the exact gathers when it is not finite.
    """
    return _memo(_DENSE_CACHE, (n_in, n_out, str(device), dtype),
                 lambda: pool_matrix(n_in, n_out, device, dtype))


_ROW_BAG_CACHE: Dict[tuple, Tuple[Tensor, Tensor, Tensor]] = {}


@torch.jit.unused
def _row_bags(m: Tensor, planes: int, key: tuple) -> Tuple[Tensor, Tensor, Tensor]:
    """``torch.embedding_bag`` tables applying the (rows, cols) matrix ``m`` to the rows of each
    of ``planes`` stacked planes: with t viewed as (planes * cols, R), output row
    ``(p, r) = sum_c m[r, c] * t[p * cols + c]`` over the non-zeros of m only (so a NaN/Inf
    row never meets a zero weight). Returns int32 indices and offsets and the weights,
    memoised under ``key`` (which must identify m) and ``planes``.
    """

    def build() -> Tuple[Tensor, Tensor, Tensor]:
        rows, cols = m.shape
        nz_r, nz_c = m.nonzero(as_tuple=True)  # row-major: bag r holds its columns in order
        counts = torch.bincount(nz_r, minlength=rows)
        per_plane = torch.arange(planes, device=m.device).unsqueeze(1)
        idx = (per_plane * cols + nz_c.unsqueeze(0)).reshape(-1).to(torch.int32)
        starts = torch.cumsum(counts, 0) - counts
        offsets = (per_plane * nz_c.numel() + starts.unsqueeze(0)).reshape(-1).to(torch.int32)
        return idx, offsets, m[nz_r, nz_c].repeat(planes)

    return _memo(_ROW_BAG_CACHE, key + (planes,), build)


@torch.jit.unused
def bag_shrink(t: Tensor, left: Tensor, right: Tensor, key: tuple) -> Tensor:
    """``left @ t @ right.T`` for every plane, CPU: (..., a, b) -> (..., p, q).

    The rows by one weighted ``embedding_bag`` over the (N*a, b) row view (fbgemm's fused row
    sums, reading t once; each output row sums only its bin's rows), the columns by one small
    GEMM. ``key`` identifies ``left`` for the memoised tables.
    """
    lead, (a, b) = t.shape[:-2], t.shape[-2:]
    planes = t.numel() // (a * b)
    idx, offsets, weights = _row_bags(left, planes, key)
    rows = torch.embedding_bag(t.reshape(planes * a, b), idx, offsets, False, 0, False, weights,
                               False)[0]  # (N*p, b)
    return torch.mm(rows, right.t()).reshape(*lead, left.shape[0], right.shape[0])


@torch.jit.unused
def bag_grow(t: Tensor, left: Tensor, right: Tensor, key: tuple) -> Tensor:
    """``left @ t @ right.T`` for every plane, CPU: small (..., a, b) -> big (..., p, q).

    The columns by one GEMM on the small map, then each output row as the weighted sum of the
    one or two rows its bin(s) cover, by one ``embedding_bag`` (written once).
    """
    lead, (a, b) = t.shape[:-2], t.shape[-2:]
    planes = t.numel() // (a * b)
    cols = torch.mm(t.reshape(planes * a, b), right.t())  # (N*a, q)
    idx, offsets, weights = _row_bags(left, planes, key)
    out = torch.embedding_bag(cols, idx, offsets, False, 0, False, weights, False)[0]
    return out.reshape(*lead, left.shape[0], right.shape[0])


_CONST_CACHE: Dict[Tuple[int, float, str, torch.dtype], Tensor] = {}


@torch.jit.unused
def cached_full(n: int, value: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A cached read-only (n,) tensor filled with ``value`` (the summing/averaging vectors of
    the eager kernels' matrix-vector products): one dictionary lookup instead of an op."""
    return _memo(_CONST_CACHE, (n, value, str(device), dtype),
                 lambda: torch.full((n,), value, device=device, dtype=dtype))


_ARANGE_CACHE: Dict[str, Tensor] = {}
_BAG_CACHE: Dict[Tuple[int, int, str], Tuple[Tensor, Tensor]] = {}


@torch.jit.unused
def cached_bags(n: int, bag: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    """(indices, offsets), int32, for ``torch.embedding_bag`` to sum each run of ``bag``
    consecutive rows of an (n, R) matrix: indices ``0 .. n-1``, offsets ``0, bag, 2*bag, ...``.

    The indices are a prefix of one arange per device that grows by doubling (4 bytes per image
    row, shared by every size); the offsets (n / bag of them) are memoised per size.
    """
    key = str(device)
    table = _ARANGE_CACHE.get(key)
    if table is None or table.numel() < n:
        size = max(n, 2 * table.numel() if table is not None else 0, 1024)
        table = _ARANGE_CACHE[key] = torch.arange(size, device=device, dtype=torch.int32)
    offsets = _memo(_BAG_CACHE, (n, bag, key),
                    lambda: torch.arange(0, n, bag, device=device, dtype=torch.int32))
    return table[:n], offsets


# ``left @ t @ right.T`` for every plane of t (..., a, b), left (p, a), right (q, b): pooling
# and unpooling with the matrices above. Both products run as single GEMMs over all planes (a 2-D
# right operand folds the batch dimensions; a broadcast 2-D left operand would run one tiny
# product per plane). Used by the eager kernels and by the dense export formulation.
def _planes_mm(t: Tensor, m: Tensor) -> Tensor:
    """(..., a, b) @ (b, c) -> (..., a, c) as one (N*a, b) x (b, c) GEMM (copies t if needed)."""
    lead = t.shape[:-1]
    return torch.mm(t.reshape(-1, t.shape[-1]), m).reshape(*lead, m.shape[1])


def matrix_shrink(t: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """Big planes -> small: (..., a, b) -> (..., p, q); the full-size operand is read once."""
    u = _planes_mm(t, right.t())  # (..., a, q)
    return _planes_mm(u.transpose(-1, -2), left.t()).transpose(-1, -2)  # (..., p, q)


def matrix_grow(t: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """Small planes -> big: (..., a, b) -> (..., p, q), contiguous; written once."""
    u = _planes_mm(t.transpose(-1, -2), left.t())  # (..., b, p)
    return _planes_mm(u.transpose(-1, -2), right.t())  # (..., p, q)
