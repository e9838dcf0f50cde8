"""``streamtmr.cache.cached_tensors``: derived tensors built once per facts and code, read back
as safetensors after their SHA-256 is checked, rebuilt when damaged, and never a failure when
the cache cannot be written."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from streamtmr import cache


def builder(calls: list, value: float = 1.0):
    def build():
        calls.append(value)
        return {"a": torch.arange(6.0).reshape(2, 3) * value, "n": torch.tensor(7)}
    return build


def test_built_once_per_facts_then_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMTMR_CACHE", str(tmp_path))
    calls: list = []
    first = cache.cached_tensors("demo", {"x": 1}, builder(calls))
    again = cache.cached_tensors("demo", {"x": 1}, builder(calls, 99.0))   # not built: read
    assert calls == [1.0]
    assert again.keys() == first.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    other = cache.cached_tensors("demo", {"x": 2}, builder(calls, 3.0))    # other facts
    assert calls == [1.0, 3.0] and torch.equal(other["a"], first["a"] * 3)
    entries = sorted((tmp_path / "demo").glob("*.safetensors"))
    assert len(entries) == 2
    record = json.loads(entries[0].with_name(entries[0].name + ".json").read_text())
    assert record["sha256"] == cache.file_sha256(entries[0])
    assert record["code_sha256"] == cache.code_sha256() and record["kind"] == "demo"


def test_facts_with_numpy_values_key_an_entry(tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.setenv("STREAMTMR_CACHE", str(tmp_path))
    calls: list = []
    facts = {"lengths": np.float32(0.25), "shape": (2, 3)}
    cache.cached_tensors("demo", facts, builder(calls))
    cache.cached_tensors("demo", dict(facts), builder(calls))
    assert calls == [1.0]


def test_a_damaged_entry_is_built_again_not_read(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMTMR_CACHE", str(tmp_path))
    calls: list = []
    cache.cached_tensors("demo", {"x": 1}, builder(calls))
    (entry,) = (tmp_path / "demo").glob("*.safetensors")
    data = bytearray(entry.read_bytes())
    data[-1] ^= 0xFF                                   # same size, one byte flipped
    entry.write_bytes(bytes(data))
    out = cache.cached_tensors("demo", {"x": 1}, builder(calls, 2.0))
    assert calls == [1.0, 2.0] and torch.equal(out["a"], torch.arange(6.0).reshape(2, 3) * 2)
    assert cache.verify(entry) is not None             # rewritten, and whole again


def test_a_cache_that_cannot_be_written_costs_only_time(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("STREAMTMR_CACHE", str(blocker))
    calls: list = []
    with caplog.at_level(logging.WARNING, logger="streamtmr.cache"):
        out = cache.cached_tensors("demo", {"x": 1}, builder(calls))
        out2 = cache.cached_tensors("demo", {"x": 1}, builder(calls))
    assert calls == [1.0, 1.0] and torch.equal(out["a"], out2["a"])
    assert "building without a cache" in caplog.text


def test_the_source_hash_changes_with_any_python_file(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "sub" / "b.py").write_text("y = 2\n")
    base = cache.source_sha256(tmp_path / "pkg")
    (tmp_path / "pkg" / "notes.txt").write_text("not code")
    assert cache.source_sha256(tmp_path / "pkg") == base
    (tmp_path / "pkg" / "sub" / "b.py").write_text("y = 3\n")
    changed = cache.source_sha256(tmp_path / "pkg")
    assert changed != base
    (tmp_path / "pkg" / "sub" / "b.py").rename(tmp_path / "pkg" / "sub" / "c.py")
    assert cache.source_sha256(tmp_path / "pkg") not in (base, changed)   # a rename counts
    assert cache.code_sha256() == cache.source_sha256(Path(cache.__file__).parent)
