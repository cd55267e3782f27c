"""Build of the optional C extension ``mlca.attention._mlca_c`` (the rest is in pyproject.toml).

The extension is plain C against CPython's API (no PyTorch headers), so it builds in seconds with
any C compiler and any installed torch. It is optional: where it cannot be built (no compiler),
the install still succeeds and MLCA runs its PyTorch kernels
(``mlca.attention.mlca.backends.c.native_available()`` says which). The sources live with the
C backend (``src/mlca/attention/mlca/backends/c/``); the module keeps its import name.
"""

import sys

from setuptools import Extension, setup

# -fno-trapping-math: lets the compiler turn the sigmoid's NaN/range selects into vector blends
# (it changes no result, only whether FP exception flags may be raised speculatively).
if sys.platform.startswith("linux"):
    # -fopenmp: at run time the extension's libgomp.so.1 resolves to the copy PyTorch loaded.
    compile_args, link_args = ["-O3", "-fno-trapping-math", "-fopenmp"], ["-fopenmp"]
elif sys.platform == "win32":
    compile_args, link_args = ["/O2", "/openmp"], []
else:  # macOS clang has no OpenMP by default: single-threaded kernels
    compile_args, link_args = ["-O3", "-fno-trapping-math"], []

setup(
    ext_modules=[
        Extension(
            "mlca.attention._mlca_c",
            sources=["src/mlca/attention/mlca/backends/c/_mlca_c.c"],
            depends=["src/mlca/attention/mlca/backends/c/_mlca_c_kernels.h"],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            optional=True,
        )
    ]
)
