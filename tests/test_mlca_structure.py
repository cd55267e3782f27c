"""The shape of the MLCA subpackage: the dispatch table answers as its docstring and docs/mlca.md
say, and every module under mlca.attention imports on its own, first or in any order, with no
import circle."""

from __future__ import annotations

import ast
import importlib.util
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mlca.attention.mlca import dispatch
from mlca.attention.mlca.backends.c import native_available

ROOT = Path(__file__).resolve().parents[1]


def _attention_dir() -> Path:
    return Path(importlib.util.find_spec("mlca.attention").submodule_search_locations[0])


def _modules() -> list[str]:
    base = _attention_dir()
    names = []
    for path in sorted(base.rglob("*.py")):
        parts = list(path.relative_to(base).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(["mlca", "attention", *parts]))
    return names


# (mode, device, dtype, layout, forced) -> what the documented table says runs
DOCUMENTED = [
    (("script", "cpu", "float32", "nchw", "auto"), ("reference",)),
    (("script", "cuda", "float16", "*", "triton"), ("reference",)),
    (("export", "cpu", "float64", "channels_last", "c"), ("reference",)),
    (("func", "cpu", "float32", "nchw", "c"), ("error",)),
    (("func", "cuda", "float32", "*", "triton"), ("error",)),
    (("func", "cpu", "float32", "nchw", "auto"), ("reference",)),
    (("observed", "cpu", "float32", "nchw", "c"), ("torch",)),
    (("observed", "cuda", "float32", "*", "auto"), ("torch",)),
    (("eager", "cuda", "float32", "*", "auto"), ("triton", "torch")),
    (("compile", "cuda", "bfloat16", "*", "auto"), ("triton", "torch")),
    (("eager", "cuda", "float64", "*", "auto"), ("torch",)),
    (("eager", "cpu", "float32", "nchw", "auto"), ("c", "torch")),
    (("compile", "cpu", "float64", "channels_last", "auto"), ("c", "torch")),
    (("eager", "cpu", "float16", "nchw", "auto"), ("torch",)),
    (("eager", "cpu", "float32", "strided", "auto"), ("torch",)),
    (("eager", "mps", "float32", "*", "auto"), ("torch",)),
    (("eager", "cpu", "float16", "nchw", "c"), ("c",)),
    (("compile", "cpu", "float32", "nchw", "triton"), ("triton",)),
    (("eager", "cuda", "float32", "*", "torch"), ("torch",)),
]


@pytest.mark.parametrize("key, runs", DOCUMENTED)
def test_dispatch_table_answers_as_documented(key, runs):
    assert dispatch.lookup(*key) == runs


def _docstring_table() -> list[str]:
    lines = dispatch.__doc__.split("::", 1)[1].strip("\n").split("\n\n")[0].split("\n")
    return [" ".join(line.split()) for line in lines]


def test_the_table_is_the_one_in_the_docstring_and_in_the_docs():
    rows = _docstring_table()
    assert rows[0].split() == ["mode", "device", "dtype", "layout", "forced", "->", "runs"]
    parsed = []
    for row in rows[1:]:
        fields, runs = row.split(" -> ")
        parsed.append(dispatch._rule(*fields.split(), runs))
    assert tuple(parsed) == dispatch.TABLE
    docs = " ".join((ROOT / "docs" / "mlca.md").read_text().split())
    assert " ".join(textwrap.dedent("\n".join(rows)).split()) in docs


def test_select_on_real_inputs():
    """The table wired to the inputs: device, dtype and layout are read from x."""
    w = torch.randn(1, 1, 3)
    x = torch.randn(1, 4, 6, 6)
    want = "c" if native_available() else "torch"
    assert dispatch.select(x, w, w, "auto") == ("eager", want)
    assert dispatch.select(x.to(memory_format=torch.channels_last), w, w, "auto") == ("eager", want)
    assert dispatch.select(x[..., ::2], w, w, "auto") == ("eager", "torch")
    assert dispatch.select(x.half(), w, w, "auto") == ("eager", "torch")
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False):
        assert dispatch.select(x, w, w, "triton") == ("observed", "torch")
    with pytest.raises(ValueError, match="backend 'c' cannot run this input"):
        dispatch.select(x.half(), w, w, "c")


def _module_level_imports(path: Path, name: str, package: bool) -> set[str]:
    """mlca.attention modules imported at module level (not inside functions) by one file."""
    tree = ast.parse(path.read_text())
    pkg = name if package else name.rsplit(".", 1)[0]
    found = set()
    for node in tree.body:
        if isinstance(node, ast.If):  # TYPE_CHECKING blocks run no import
            continue
        nodes = [node] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
        if isinstance(node, ast.Try):
            nodes = [n for n in node.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        for imp in nodes:
            if isinstance(imp, ast.Import):
                found |= {a.name for a in imp.names}
                continue
            base = imp.module or ""
            if imp.level:
                up = pkg.split(".")[: len(pkg.split(".")) - imp.level + 1]
                base = ".".join(up + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in imp.names}
    return {m for m in found if m.startswith("mlca.attention")}


def test_no_import_circle_among_the_module_level_imports():
    base = _attention_dir()
    modules = set(_modules())
    graph = {}
    for path in base.rglob("*.py"):
        parts = list(path.relative_to(base).with_suffix("").parts)
        package = parts[-1] == "__init__"
        name = ".".join(["mlca", "attention", *(parts[:-1] if package else parts)])
        # a package's __init__ importing its own submodules is no circle; a submodule importing
        # its parent package only runs code already executed
        graph[name] = {m for m in _module_level_imports(path, name, package)
                       if m in modules and not name.startswith(m + ".") and m != name}
    # the leaves every formulation and backend builds on
    assert graph["mlca.attention.mlca.mix"] == set() and graph["mlca.attention.mlca.pooling"] == set()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join(trail + [node, nxt]))
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


_CHILD = """
import os, random, sys
import torch  # the parent pays the third-party imports once; every child imports mlca afresh
try:
    import triton, triton.language  # noqa: E401,F401
except ImportError:
    pass
names = sys.argv[1].split(",")
cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
width = max(1, min(4, cores or 1))  # children at once: the cores we may use


def child(first):
    order = [first] + random.Random(first).sample(names, len(names))
    try:
        import importlib
        for name in order:
            importlib.import_module(name)
    except BaseException as e:
        print(f"{first} first, then {order[1:]}: {type(e).__name__}: {e}", flush=True)
        os._exit(1)
    os._exit(0)


failed = []
for i in range(0, len(names), width):
    pids = {}
    for first in names[i:i + width]:
        pid = os.fork()
        if pid == 0:
            child(first)
        pids[pid] = first
    for pid, first in pids.items():
        if os.waitpid(pid, 0)[1]:
            failed.append(first)
print("FAILED", failed)
sys.exit(1 if failed else 0)
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_every_module_imports_first_and_in_any_order():
    names = _modules()
    assert "mlca.attention.mlca.dispatch" in names and "mlca.attention.se" in names
    random.Random(0).shuffle(names)
    out = subprocess.run([sys.executable, "-c", _CHILD, ",".join(names)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
