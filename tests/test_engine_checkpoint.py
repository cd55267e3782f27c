"""Checkpoints: atomic writes, safe loads, RNG state as plain data."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mlca.engine import checkpoint as C
from mlca.engine.distributed import rng_state, set_rng_state


def test_roundtrip_with_weights_only(tmp_path):
    state = {"model": {"w": torch.randn(3, 4)}, "epoch": 3, "names": ["a", "b"], "cfg": {"lr": 0.01, "x": None},
             "rng": rng_state()}
    p = C.save_checkpoint(tmp_path / "w" / "last.pt", state)
    back = C.load_checkpoint(p)
    assert torch.equal(back["model"]["w"], state["model"]["w"])
    assert back["epoch"] == 3 and back["names"] == ["a", "b"] and back["cfg"] == {"lr": 0.01, "x": None}
    # nothing but the checkpoint is left in the folder (the temp file was renamed)
    assert sorted(x.name for x in p.parent.iterdir()) == ["last.pt"]


def test_failed_write_leaves_previous_file_intact(tmp_path, monkeypatch):
    p = tmp_path / "last.pt"
    C.save_checkpoint(p, {"epoch": 1, "w": torch.ones(2)})
    before = p.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"partial garbage")  # some bytes reach the temp file, then the write dies
        raise OSError("disk full")

    monkeypatch.setattr(C.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        C.save_checkpoint(p, {"epoch": 2, "w": torch.zeros(2)})
    assert p.read_bytes() == before
    assert C.load_checkpoint(p)["epoch"] == 1
    assert sorted(x.name for x in tmp_path.iterdir()) == ["last.pt"]  # temp file cleaned up


def test_copy_is_the_same_bytes_and_atomic(tmp_path, monkeypatch):
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    C.save_checkpoint(last, {"epoch": 1, "w": torch.randn(1000)})
    C.copy_checkpoint(last, best)
    assert best.read_bytes() == last.read_bytes() and C.load_checkpoint(best)["epoch"] == 1
    C.save_checkpoint(last, {"epoch": 2, "w": torch.randn(1000)})  # a new last.pt leaves best.pt as it was
    assert C.load_checkpoint(best)["epoch"] == 1

    def broken_copy(src, dst, length=0):
        dst.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(C.shutil, "copyfileobj", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        C.copy_checkpoint(last, best)
    assert C.load_checkpoint(best)["epoch"] == 1
    assert sorted(x.name for x in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_unserialisable_object_leaves_previous_file_intact(tmp_path):
    p = tmp_path / "last.pt"
    C.save_checkpoint(p, {"epoch": 1})
    with pytest.raises(Exception):
        C.save_checkpoint(p, {"epoch": 2, "bad": lambda: None})  # lambdas cannot be pickled
    assert C.load_checkpoint(p)["epoch"] == 1


def test_weights_only_refuses_arbitrary_objects(tmp_path):
    import argparse

    p = tmp_path / "evil.pt"
    torch.save({"x": argparse.Namespace(a=1)}, p)  # any class instance: refused by the safe unpickler
    with pytest.raises(C.CheckpointError, match="evil.pt"):
        C.load_checkpoint(p)


def test_missing_truncated_and_non_dict(tmp_path):
    with pytest.raises(C.CheckpointError, match="not found"):
        C.load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "trunc.pt"
    C.save_checkpoint(bad, {"w": torch.randn(100)})
    bad.write_bytes(bad.read_bytes()[:50])
    with pytest.raises(C.CheckpointError, match="trunc.pt"):
        C.load_checkpoint(bad)
    lst = tmp_path / "list.pt"
    torch.save([1, 2], lst)
    with pytest.raises(C.CheckpointError, match="expected a dict"):
        C.load_checkpoint(lst)


def test_load_model_needs_model_entries(tmp_path):
    p = tmp_path / "x.pt"
    C.save_checkpoint(p, {"epoch": 0})
    with pytest.raises(C.CheckpointError, match="model_config"):
        C.load_model(p)


def test_rng_state_survives_weights_only_roundtrip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leave a cached gaussian in numpy's state
    p = C.save_checkpoint(tmp_path / "r.pt", {"rng": rng_state()})
    expected = (random.random(), np.random.standard_normal(3).tolist(), np.random.rand(), torch.rand(3))
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    set_rng_state(C.load_checkpoint(p)["rng"])
    got = (random.random(), np.random.standard_normal(3).tolist(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and got[2] == expected[2]
    assert torch.equal(got[3], expected[3])
