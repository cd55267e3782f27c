"""A label cache: a split's parsed records kept in one file, re-parsed only where files changed.

Reading a 20,000-image split means opening every image header and parsing every label file,
which takes tens of seconds on a small machine, at every start. So the first read scans the
files in parallel and writes what it found into a cache file next to the labels (e.g.
``labels/train.mlca-cache.npz``); later reads load it and re-parse only the items whose
files changed size or modification time, or that are new (items gone from the split are
dropped). Items that failed to parse are parsed again at every read, so fixing any file
(e.g. adding the missing image an XML names) is seen at once.

The file is a NumPy ``.npz`` read with ``allow_pickle=False`` (no code can run from a
crafted cache file): the per-object arrays of all records concatenated, and one JSON
document with everything else. It is ignored (and rewritten) when:

- its format version differs from :data:`CACHE_VERSION`;
- its *fingerprint* differs: the reader's settings that change parsing (the class count
  or names, ``keep_difficult``) and a hash of the parsing code itself (the modules that
  parse labels and images), so upgrading mlca never serves records parsed by old rules;
- it cannot be read (truncated, not an npz, wrong contents): with a warning.

A folder that cannot be written falls back to reading without a cache, with a warning.
``label_cache: false`` in the dataset YAML (or ``MLCA_LABEL_CACHE=0`` in the environment)
turns the cache off.
"""

from __future__ import annotations

import functools

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import warnings
import zipfile
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import DataError
from .record import Record
from .scan import ReadReport, collect, parse_one

__all__ = [
    "CACHE_VERSION",
    "CACHE_SUFFIX",
    "LabelCacheWarning",
    "cache_enabled",
    "cache_file",
    "code_hash",
    "scan_workers",
    "cached_collect",
]

CACHE_VERSION = 1
CACHE_SUFFIX = ".mlca-cache.npz"
# below this many items to parse, a pool costs more than it saves (process start-up, pickling)
PARALLEL_MIN = 512
# "process" or "thread": label parsing is pure Python and PIL parses image headers holding the
# GIL, so processes scale and threads do not (benchmarks/bench_data.py on 2 cores, 20,000
# images: processes 1.8x faster than one thread, threads 0.7x)
POOL = "process"


class LabelCacheWarning(UserWarning):
    """The label cache could not be read or written; reading went on without it."""


def cache_enabled(options: dict | None = None) -> bool:
    """Whether to use the cache: ``label_cache`` in the config's options, then ``$MLCA_LABEL_CACHE``."""
    if options and "label_cache" in options:
        return bool(options["label_cache"])
    return os.environ.get("MLCA_LABEL_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_file(anchor: Path, spec: Any, simple: bool) -> Path:
    """Where the cache of a split lives: beside the folder ``anchor`` (its labels or annotations).

    ``simple``: the split is that folder alone, so ``<anchor>.mlca-cache.npz`` names it;
    otherwise (a list, a ``.txt`` listing, a VOC set name) a short hash of the spec is added,
    so two splits drawing on one folder keep separate caches.
    """
    anchor = Path(anchor)
    if simple:
        return anchor.parent / f"{anchor.name}{CACHE_SUFFIX}"
    tag = hashlib.sha1(json.dumps(spec, default=str, sort_keys=True).encode()).hexdigest()[:10]
    return anchor.parent / f"{anchor.name}.{tag}{CACHE_SUFFIX}"


def code_hash(*modules: Any) -> str:
    """A hash of the source files of ``modules``: the parsing rules a cache was made with."""
    h = hashlib.sha256()
    for mod in modules:
        src = getattr(mod, "__file__", None)
        h.update(Path(src).read_bytes() if src else repr(mod).encode())
    h.update(",".join(f.name for f in dataclasses.fields(Record)).encode())
    return h.hexdigest()[:16]


def scan_workers() -> int:
    """Pool size: the CPUs this process may run on (at most 16)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, 16))


# ----------------------------------------------------------------------------- file state


def _stat(path: str) -> tuple[int, int]:
    """``(size, mtime_ns)`` of a file, ``(-1, 0)`` when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return -1, 0
    return st.st_size, st.st_mtime_ns


def _state(paths: Sequence[Any]) -> list[tuple[str, int, int]]:
    """``[(path, size, mtime_ns), ...]`` of an item's files."""
    return [(p, *_stat(p)) for p in map(str, paths)]


# ----------------------------------------------------------------------------- parsing


def _parse_one(parse: Callable, deps: Callable, item: Any) -> tuple[str, Any, list]:
    """``("ok", result, state)`` or ``("bad", DataError, state)``; other exceptions propagate.

    The files are stat'ed before parsing, so one changed meanwhile is parsed again next time.
    """
    state = _state(deps(item))
    try:
        return "ok", parse(item), state
    except DataError as e:
        return "bad", e, state


# what a forked worker inherits: the parse and deps callables and the items (sent as ranges)
_WORKER: tuple = ()


def _init_worker(parse: Callable, deps: Callable, items: Sequence[Any]) -> None:
    global _WORKER
    _WORKER = (parse, deps, items)


def _parse_range(start: int, stop: int) -> tuple:
    parse, deps, items = _WORKER
    return _pack([_parse_one(parse, deps, items[i]) for i in range(start, stop)], items[start:stop])


def _pack(results: list[tuple[str, Any, list]], items: Sequence[Any]) -> tuple:
    """A worker's results in a form that pickles fast: per-object arrays concatenated.

    Unpickling thousands of small records (each a Path and two arrays) costs the parent more
    than building them again from a few big arrays.
    """
    statuses = [s for s, _, _ in results]
    states = [st for _, _, st in results]
    goods = [(i, r) for i, (s, r, _) in enumerate(results) if s == "ok"]
    records = [r[0] for _, r in goods]
    fields: dict[str, list] = {}
    arrays: dict[str, tuple[np.ndarray, list[int]]] = {}
    for f in dataclasses.fields(Record):
        values = [getattr(rec, f.name) for rec in records]
        if values and all(isinstance(v, np.ndarray) and v.ndim >= 1 for v in values):
            arrays[f.name] = (np.concatenate(values), [len(v) for v in values])
        elif f.name == "image":  # the item itself (YOLO) is not sent back
            fields[f.name] = [None if v == items[i] else str(v) for (i, _), v in zip(goods, values)]
        else:
            fields[f.name] = values
    extras = [r[1:] for _, r in goods]
    errors = {i: r for i, (s, r, _) in enumerate(results) if s != "ok"}
    return statuses, states, fields, arrays, extras, errors


def _unpack(packed: tuple, items: Sequence[Any]) -> list[tuple[str, Any, list]]:
    statuses, states, fields, arrays, extras, errors = packed
    ends = {name: np.cumsum([0] + lengths).tolist() for name, (_, lengths) in arrays.items()}
    out, g = [], 0
    for i, status in enumerate(statuses):
        if status != "ok":
            out.append((status, errors[i], states[i]))
            continue
        kwargs = {name: column[g] for name, column in fields.items()}
        if kwargs.get("image", 0) is None:
            kwargs["image"] = items[i]
        for name, (a, _) in arrays.items():
            kwargs[name] = a[ends[name][g] : ends[name][g + 1]]
        out.append((status, (Record(**kwargs), *extras[g]), states[i]))
        g += 1
    return out


def parse_all(
    items: Sequence[Any],
    parse: Callable,
    deps: Callable = lambda item: [item],
    workers: int | None = None,
    pool: str | None = None,
) -> list[tuple[str, Any, list]]:
    """``parse`` every item, in a pool when there are many; results in item order.

    Each result is ``(status, result, state)``: ``("ok", parse(item), ...)`` or ``("bad", the
    DataError it raised, ...)``, and the ``(path, size, mtime_ns)`` of the item's ``deps``.
    """
    workers = scan_workers() if workers is None else workers
    pool = pool or POOL
    if pool not in ("process", "thread"):
        raise ValueError(f"pool must be 'process' or 'thread', got {pool!r}")
    if pool == "process" and sys.platform == "win32":
        pool = "thread"  # no fork
    n = len(items)
    if workers <= 1 or n < max(PARALLEL_MIN, 2):
        return [_parse_one(parse, deps, it) for it in items]
    step = max(1, min(512, -(-n // (workers * 8))))
    bounds = [(a, min(a + step, n)) for a in range(0, n, step)]
    if pool == "thread":
        with ThreadPoolExecutor(workers) as ex:
            chunks = ex.map(lambda b: [_parse_one(parse, deps, items[i]) for i in range(*b)], bounds)
            return [r for chunk in chunks for r in chunk]
    import multiprocessing as mp
    from concurrent.futures.process import BrokenProcessPool

    if mp.current_process().daemon:  # a daemonic process (e.g. a DataLoader worker) may not fork
        return [_parse_one(parse, deps, it) for it in items]
    # fork hands ``parse`` (often a closure, which cannot be pickled) and the items to the
    # workers without pickling them, and starts in milliseconds; only index ranges go out and
    # results come back. The workers touch only files, PIL and NumPy.
    try:
        with ProcessPoolExecutor(
            workers, mp.get_context("fork"), initializer=_init_worker, initargs=(parse, deps, items)
        ) as ex:
            chunks = ex.map(_parse_range, *zip(*bounds))
            return [r for (a, b), chunk in zip(bounds, chunks) for r in _unpack(chunk, items[a:b])]
    except (BrokenProcessPool, OSError) as e:  # a worker killed (out of memory?), or no fork
        warnings.warn(f"parallel scan failed ({e!r}); scanning in this process", LabelCacheWarning, stacklevel=3)
        return [_parse_one(parse, deps, it) for it in items]


# ----------------------------------------------------------------------------- the file
#
# Columnar, so that loading 20,000 entries is a few array reads and one JSON parse:
#   meta (uint8, JSON): version, fingerprint, a common path prefix, per entry its key and its
#       files (prefix stripped), the errors of bad entries, per good entry the record's
#       non-array fields (``image`` left out when it is the key) and the parse's extras;
#   stat (int64, (files, 2)): size and mtime_ns of every entry's files, in order;
#   ok (bool, (entries,)); n_<field> (int64, (good entries,)) and a_<field>: each per-object
#       array field of the records (boxes, labels, ...) concatenated.


_PLAIN = (int, float, str, bool, type(None))


def _to_json(v: Any) -> Any:
    if type(v) in _PLAIN:
        return v
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (np.integer, np.floating, np.bool_)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return [_to_json(x) for x in v]
    return v


def _encode(entries: dict[str, dict], fingerprint: dict) -> dict[str, np.ndarray]:
    keys = list(entries)
    paths = keys + [p for k in keys for p, _, _ in entries[k]["deps"]]
    prefix = os.path.commonprefix(paths) if paths else ""
    cut = len(prefix)
    good = [entries[k]["result"] for k in keys if entries[k]["status"] == "ok"]
    good_keys = [k for k in keys if entries[k]["status"] == "ok"]
    records = [r[0] for r in good]
    array_fields, scalars = [], {}
    for f in dataclasses.fields(Record):
        values = [getattr(r, f.name) for r in records]
        if values and all(isinstance(v, np.ndarray) and v.ndim >= 1 for v in values):
            array_fields.append(f.name)
        elif f.name == "image":
            scalars["image"] = [None if str(v) == k else str(v) for v, k in zip(values, good_keys)]
        else:
            scalars[f.name] = [_to_json(v) for v in values]
    meta = {
        "version": CACHE_VERSION,
        "fingerprint": fingerprint,
        "prefix": prefix,
        "keys": [k[cut:] for k in keys],
        "deps": [[p[cut:] for p, _, _ in entries[k]["deps"]] for k in keys],
        "errors": [_to_json(list(entries[k]["result"].__reduce__()[1])) for k in keys if entries[k]["status"] != "ok"],
        "scalars": scalars,
        "arrays": array_fields,
        "extras": [list(r[1:]) if all(type(x) in _PLAIN for x in r[1:]) else _to_json(list(r[1:])) for r in good],
    }
    out = {
        "meta": np.frombuffer(json.dumps(meta, separators=(",", ":")).encode(), np.uint8),
        "stat": np.array([(size, mtime) for k in keys for _, size, mtime in entries[k]["deps"]], np.int64).reshape(-1, 2),
        "ok": np.array([entries[k]["status"] == "ok" for k in keys], bool),
    }
    for name in array_fields:
        values = [getattr(r, name) for r in records]
        out[f"n_{name}"] = np.array([len(v) for v in values], np.int64)
        out[f"a_{name}"] = np.concatenate(values)
    return out


class _Cached:
    """A loaded cache, kept columnar; a record is built only when it is used."""

    def __init__(self, npz: Any, fingerprint: dict) -> None:
        meta = json.loads(bytes(npz["meta"]).decode())
        self.valid = meta.get("version") == CACHE_VERSION and meta.get("fingerprint") == fingerprint
        if not self.valid:
            return
        prefix = meta["prefix"]
        self.index = {prefix + k: j for j, k in enumerate(meta["keys"])}
        self.ok = npz["ok"].tolist()
        deps = meta["deps"]
        if len(self.ok) != len(self.index) or len(deps) != len(self.index):
            raise ValueError("entry counts disagree")
        self.dep_start = np.cumsum([0] + [len(d) for d in deps]).tolist()
        self.dep_paths = [prefix + p for d in deps for p in d]
        self.dep_stat = list(map(tuple, npz["stat"].tolist()))
        if len(self.dep_stat) != len(self.dep_paths):
            raise ValueError("file counts disagree")
        self.good = np.cumsum([0] + self.ok).tolist()  # entry j is good record good[j]
        self.errors = meta["errors"]
        self.arrays = {name: npz[f"a_{name}"] for name in meta["arrays"]}
        self.ends = {name: np.cumsum([0] + npz[f"n_{name}"].tolist()).tolist() for name in meta["arrays"]}
        self.scalars, self.extras = meta["scalars"], meta["extras"]

    def unchanged(self, j: int) -> bool:
        """Whether entry ``j`` parsed fine and none of its files changed size or mtime."""
        if not self.ok[j]:
            return False
        paths, stats = self.dep_paths, self.dep_stat
        return all(_stat(paths[d]) == stats[d] for d in range(self.dep_start[j], self.dep_start[j + 1]))

    def deps(self, j: int) -> list[tuple[str, int, int]]:
        return [(self.dep_paths[d], *self.dep_stat[d]) for d in range(self.dep_start[j], self.dep_start[j + 1])]

    def error(self, j: int) -> list:
        return self.errors[j - self.good[j]]

    def result(self, j: int, key: str, item: Any) -> tuple:
        """The cached ``(record, *extras)`` of entry ``j``; ``item`` is the record's image when the key is it."""
        g = self.good[j]
        kwargs = {name: column[g] for name, column in self.scalars.items()}
        if kwargs.get("image", 0) is None:
            kwargs["image"] = item if isinstance(item, Path) else key
        for name, e in self.ends.items():
            kwargs[name] = self.arrays[name][e[g] : e[g + 1]]
        return (Record(**kwargs), *self.extras[g])


def _load(path: Path, fingerprint: dict) -> _Cached | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            cached = _Cached(npz, fingerprint)
    except (OSError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        warnings.warn(
            f"ignoring the unreadable label cache {path} ({type(e).__name__}: {e}); re-scanning the split",
            LabelCacheWarning,
            stacklevel=4,
        )
        return None
    return cached if cached.valid else None


def _save(path: Path, entries: dict[str, dict], fingerprint: dict) -> None:
    """Write atomically (a temp file renamed into place); warn and go on if the folder is not writable."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        warnings.warn(
            f"cannot write the label cache {path} ({e.strerror or e}); reading without a cache, "
            f"so the next start scans the split again",
            LabelCacheWarning,
            stacklevel=4,
        )
        return
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **_encode(entries, fingerprint))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)  # readers see the old cache or the new one, never half of one
    except OSError as e:
        warnings.warn(f"cannot write the label cache {path} ({e}); reading without a cache", LabelCacheWarning, 4)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ----------------------------------------------------------------------------- entry point


def cached_collect(
    items: Sequence[Any],
    parse: Callable[[Any], tuple],
    skip_bad: bool,
    cache: Path | None,
    fingerprint: dict,
    key: Callable[[Any], str] = str,
    deps: Callable[[Any], Sequence[Path]] = lambda item: [item],
    workers: int | None = None,
    pool: str | None = None,
) -> ReadReport:
    """What :func:`~mlca.data.records.collect` returns, with parsing cached in ``cache``.

    Args:
        items: what ``parse`` takes (an image path, a VOC item), in the split's order.
        parse: ``item -> (record, *extras)`` (extras: small JSON-able values such as the
            clip count); raises :class:`DataError` for bad data.
        skip_bad: as for ``collect``: raise the first bad item's error (in item order), or
            leave bad items out of the report.
        cache: the cache file, or ``None`` for no cache (the scan is still parallel).
        fingerprint: JSON-able settings and code version the parse depends on.
        key: an item's identity in the cache (a path string).
        deps: the files an item's result depends on; the record's image is added to them.
    """
    old = _load(cache, fingerprint) if cache is not None else None
    index = old.index if old is not None else {}
    keys = [key(it) for it in items]
    entries: dict[str, dict] = {}
    todo: list[int] = []
    for i, k in enumerate(keys):
        j = index.get(k)
        if j is not None and old.unchanged(j):
            entries[k] = {"status": "ok", "result": old.result(j, k, items[i]), "deps": j}
        else:
            todo.append(i)
    changed = set(index) != set(keys)  # items new or gone
    if todo:
        # parse_one gathers each item's notes (restored JPEGs, dropped boxes) so they are cached too
        results = parse_all([items[i] for i in todo], functools.partial(parse_one, parse), deps, workers, pool)
        for i, (status, result, state) in zip(todo, results):
            if status == "ok":
                image = str(result[0].image)
                if all(image != p for p, _, _ in state):
                    state = state + _state([image])
            k = keys[i]
            j = index.get(k)
            # only known-bad items parsed again with the same outcome: no need to rewrite
            changed |= not (status == "bad" and j is not None and not old.ok[j] and old.deps(j) == state
                            and _to_json(list(result.__reduce__()[1])) == old.error(j))  # fmt: skip
            entries[k] = {"status": status, "result": result, "deps": state}
    if cache is not None and changed:
        for e in entries.values():
            if isinstance(e["deps"], int):
                e["deps"] = old.deps(e["deps"])
        _save(cache, entries, fingerprint)

    def replay(k: str) -> tuple:
        e = entries[k]
        if e["status"] == "bad":
            raise e["result"]
        return e["result"]

    return collect(keys, replay, skip_bad)
