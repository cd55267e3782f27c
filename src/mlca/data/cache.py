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

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import warnings
import zipfile
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import DataError
from .records import ReadReport, Record, collect

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
# "process" or "thread": label parsing is pure Python and PIL's header parsing holds the GIL
# most of the time, so processes scale and threads barely do (benchmarks/bench_data.py)
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


def _stat(path: Path) -> list[int]:
    """``[size, mtime_ns]`` of a file, ``[-1, 0]`` when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return [-1, 0]
    return [st.st_size, st.st_mtime_ns]


def _deps_state(paths: Sequence[Path]) -> list[list]:
    return [[str(p), *_stat(p)] for p in paths]


def _unchanged(state: list[list]) -> bool:
    return all(_stat(Path(p)) == [size, mtime] for p, size, mtime in state)


# ----------------------------------------------------------------------------- parsing


def _parse_one(parse: Callable, item: Any) -> tuple[str, Any]:
    """``("ok", result)`` or ``("bad", DataError)``; other exceptions propagate."""
    try:
        return "ok", parse(item)
    except DataError as e:
        return "bad", e


_WORKER_PARSE: Callable | None = None


def _init_worker(parse: Callable) -> None:
    global _WORKER_PARSE
    _WORKER_PARSE = parse


def _parse_in_worker(item: Any) -> tuple[str, Any]:
    return _parse_one(_WORKER_PARSE, item)


def _executor(kind: str, workers: int, parse: Callable) -> Executor:
    if kind == "thread":
        return ThreadPoolExecutor(workers)
    if kind != "process":
        raise ValueError(f"pool must be 'process' or 'thread', got {kind!r}")
    import multiprocessing as mp

    # fork hands ``parse`` (often a closure, which cannot be pickled) to the workers without
    # pickling it, and starts in milliseconds; the workers touch only files, PIL and NumPy
    return ProcessPoolExecutor(workers, mp.get_context("fork"), initializer=_init_worker, initargs=(parse,))


def parse_all(
    items: Sequence[Any], parse: Callable, workers: int | None = None, pool: str | None = None
) -> list[tuple[str, Any]]:
    """``parse`` every item, in a pool when there are many; results in item order.

    Each result is ``("ok", parse(item))`` or ``("bad", the DataError it raised)``.
    """
    workers = scan_workers() if workers is None else workers
    pool = pool or POOL
    if pool == "process" and sys.platform == "win32":
        pool = "thread"  # no fork
    if workers <= 1 or len(items) < max(PARALLEL_MIN, 2):
        return [_parse_one(parse, it) for it in items]
    chunk = max(1, min(256, len(items) // (workers * 8)))
    with _executor(pool, workers, parse) as ex:
        if pool == "thread":
            return list(ex.map(lambda it: _parse_one(parse, it), items, chunksize=chunk))
        return list(ex.map(_parse_in_worker, items, chunksize=chunk))


# ----------------------------------------------------------------------------- the file


def _to_json(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (np.integer, np.floating, np.bool_)):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_to_json(x) for x in v]
    return v


def _encode(entries: dict[str, dict], fingerprint: dict) -> dict[str, np.ndarray]:
    """The npz arrays of a cache: per-object arrays concatenated, the rest as JSON."""
    fields = [f.name for f in dataclasses.fields(Record)]
    arrays: dict[str, list[np.ndarray]] = {}
    meta = []
    for key, e in entries.items():
        doc: dict[str, Any] = {"key": key, "deps": e["deps"]}
        if e["status"] == "ok":
            record, *extras = e["result"]
            scalars, lengths = {}, {}
            for name in fields:
                v = getattr(record, name)
                if isinstance(v, np.ndarray):
                    arrays.setdefault(name, []).append(v)
                    lengths[name] = int(v.shape[0]) if v.ndim else -1
                else:
                    scalars[name] = _to_json(v)
            doc.update(record=scalars, lengths=lengths, extras=_to_json(extras))
        else:
            _, args = e["result"].__reduce__()
            doc["error"] = _to_json(list(args))
        meta.append(doc)
    out = {
        "meta": np.frombuffer(
            json.dumps({"version": CACHE_VERSION, "fingerprint": fingerprint, "entries": meta}).encode(), np.uint8
        )
    }
    for name, parts in arrays.items():
        out[f"a_{name}"] = np.concatenate([p.reshape(-1, *p.shape[1:]) if p.ndim else p.reshape(1) for p in parts])
    return out


def _decode(npz: Any, fingerprint: dict) -> dict[str, dict] | None:
    """The entries of a loaded cache, or ``None`` when its version or fingerprint differ."""
    doc = json.loads(bytes(npz["meta"]).decode())
    if doc.get("version") != CACHE_VERSION or doc.get("fingerprint") != fingerprint:
        return None
    arrays = {k[2:]: npz[k] for k in npz.files if k.startswith("a_")}
    offsets = dict.fromkeys(arrays, 0)
    entries: dict[str, dict] = {}
    for e in doc["entries"]:
        if "error" in e:
            file, reason, line, where = e["error"]
            entries[e["key"]] = {"status": "bad", "result": DataError(file, reason, line, where), "deps": e["deps"]}
            continue
        kwargs = dict(e["record"])
        for name, n in e["lengths"].items():
            a, o = arrays[name], offsets[name]
            kwargs[name] = a[o] if n < 0 else a[o : o + n]
            offsets[name] = o + (1 if n < 0 else n)
        entries[e["key"]] = {"status": "ok", "result": (Record(**kwargs), *e["extras"]), "deps": e["deps"]}
    return entries


def _load(path: Path, fingerprint: dict) -> dict[str, dict]:
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            entries = _decode(npz, fingerprint)
    except (OSError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        warnings.warn(
            f"ignoring the unreadable label cache {path} ({type(e).__name__}: {e}); re-scanning the split",
            LabelCacheWarning,
            stacklevel=4,
        )
        return {}
    return entries or {}


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
    deps: Callable[[Any], Sequence[Path]] = lambda item: [Path(item)],
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
    old = _load(cache, fingerprint) if cache is not None else {}
    keys = [key(it) for it in items]
    entries: dict[str, dict] = {}
    todo: list[int] = []
    for i, k in enumerate(keys):
        e = old.get(k)
        if e is not None and e["status"] == "ok" and _unchanged(e["deps"]):
            entries[k] = e
        else:
            todo.append(i)
    if todo:
        todo_items = [items[i] for i in todo]
        before = [_deps_state(deps(it)) for it in todo_items]  # stat before parsing: a file
        results = parse_all(todo_items, parse, workers, pool)  # changed meanwhile is re-read next time
        for i, (status, result), state in zip(todo, results, before):
            if status == "ok":
                image = result[0].image
                if str(image) not in {s[0] for s in state}:
                    state = state + _deps_state([image])
            entries[keys[i]] = {"status": status, "result": result, "deps": state}
    # rewrite unless nothing but the known-bad items were parsed again, with the same outcome
    same = all(
        entries[keys[i]]["status"] == "bad" and old.get(keys[i], {}).get("status") == "bad"
        and old[keys[i]]["deps"] == entries[keys[i]]["deps"]
        for i in todo
    )  # fmt: skip
    if cache is not None and (not same or set(old) != set(entries)):
        _save(cache, entries, fingerprint)

    def replay(k: str) -> tuple:
        e = entries[k]
        if e["status"] == "bad":
            raise e["result"]
        return e["result"]

    return collect(keys, replay, skip_bad)
