"""MLCA, the paper's Mixed Local Channel Attention, as one subpackage (see docs/mlca.md)::

    module.py     MLCA: parameters, argument checks, forward -> dispatch
    dispatch.py   the forced choice (backend=, set_default_backend, $MLCA_BACKEND) and the
                  dispatch table: (mode, device, dtype, layout, forced) -> what runs
    reference.py  the plain differentiable formulation (script, export, torch.func)
    mix.py        steps 2-4 on the small pooled map (the one place they are written in PyTorch)
    pooling.py    adaptive-pooling tables: banded gathers, averaging matrices, cached helpers
    function.py   the one autograd Function, for any backend (eager)
    op.py         the one custom op mlca::mlca_fwd / mlca::mlca_bwd, by backend name (compile)
    backends/     torch.py, c/ (C sources + loader), triton/ (kernels, launch, settings):
                  each unsupported(x) -> reason or None, forward -> (out, saved), backward

Imports point one way: module -> dispatch, function, reference, op -> backends -> mix, pooling;
mix.py and pooling.py import nothing of the package.
"""

from .dispatch import get_default_backend, set_default_backend
from .module import MLCA, eca_kernel_size
from .reference import (
    EXPORT_FORMULATIONS, export_formulation, get_export_formulation, mlca_plain, mlca_plain_dense,
)

__all__ = [
    "MLCA", "mlca_plain", "mlca_plain_dense", "eca_kernel_size", "set_default_backend",
    "get_default_backend", "export_formulation", "get_export_formulation", "EXPORT_FORMULATIONS",
]
