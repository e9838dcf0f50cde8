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


# ---- the bound: least recently used entries go first, and only what the cache wrote --------

def _age(path: Path, seconds: float) -> None:
    import os
    import time
    t = time.time() - seconds
    os.utime(path, (t, t))


def _entry(kind: str, x: int) -> Path:
    cache.cached_tensors(kind, {"x": x}, lambda: {"a": torch.zeros(1000)})   # 4 kB of data
    (path,) = [e.path for e in cache.entries() if e.record["facts"] == {"x": x}]
    return path


def test_a_write_drops_the_least_recently_used_entries_to_fit_the_bound(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMTMR_CACHE", str(tmp_path))
    monkeypatch.setenv(cache.MAX_SIZE_ENV, "0")                    # no bound while filling
    a, b, c = (_entry("demo", x) for x in (1, 2, 3))
    for i, path in enumerate((a, b, c)):
        _age(cache.sidecar(path), 300 - 100 * i)                    # written a, then b, then c
    size = cache.entries()[0].size
    assert cache.verify(a) is not None                              # a read: used now
    assert [e.path for e in cache.entries()] == [b, c, a]           # least recently used first
    monkeypatch.setenv(cache.MAX_SIZE_ENV, str(3 * size + size // 2))
    d = _entry("other", 4)                                          # a fourth: one must go
    assert sorted(e.path for e in cache.entries()) == sorted([c, a, d])
    assert not b.exists() and not cache.sidecar(b).exists()
    calls: list = []
    cache.cached_tensors("demo", {"x": 2}, builder(calls))          # b is built again
    assert calls == [1.0]


def test_the_entry_just_written_stays_even_above_the_bound(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMTMR_CACHE", str(tmp_path))
    monkeypatch.setenv(cache.MAX_SIZE_ENV, "100")                   # smaller than any entry
    a = _entry("demo", 1)
    b = _entry("demo", 2)
    assert [e.path for e in cache.entries()] == [b] and not a.exists()


def test_only_what_the_cache_wrote_is_ever_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMTMR_CACHE", str(tmp_path))
    monkeypatch.setenv(cache.MAX_SIZE_ENV, "0")
    kept = _entry("demo", 1)
    folder = kept.parent
    crashed = folder / (cache.partial_prefix(folder / "k.safetensors") + "x1")  # a crash
    writing = folder / (cache.partial_prefix(folder / "m.safetensors") + "x2")  # in progress
    orphan = folder / "gone.safetensors.json"                       # its file was deleted
    unsealed = folder / "nosidecar.safetensors"                     # crashed before the sidecar
    for path in (crashed, writing, unsealed):
        path.write_bytes(b"\0" * 10)
    orphan.write_text(json.dumps({"file": "gone.safetensors", "sha256": "0" * 64}))
    mine = {tmp_path / "notes" / "a.json": '{"file": "x"}', tmp_path / "notes" / ".partial-x": "",
            folder / "readme.txt": "user's", folder / "other.json": "{}"}
    for path, text in mine.items():                                 # not written by the cache
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    for path in (crashed, orphan, unsealed, *mine):
        _age(path, 2 * cache.STRAY_AFTER_S)
    assert sorted(cache.strays()) == sorted([crashed, orphan, unsealed])
    cache.trim(0)
    assert not crashed.exists() and not orphan.exists() and not unsealed.exists()
    assert writing.exists() and kept.exists() and all(p.exists() for p in mine)
    assert [e.path for e in cache.entries()] == [kept]


def test_a_bad_bound_names_the_variable(tmp_path, monkeypatch):
    import pytest

    monkeypatch.setenv("STREAMTMR_CACHE", str(tmp_path))
    assert cache.parse_size("5G") == 5 * 10**9 and cache.parse_size("1.5GiB") == 3 << 29
    assert cache.parse_size("2048") == 2048 and cache.parse_size("0") == 0
    monkeypatch.setenv(cache.MAX_SIZE_ENV, "lots")
    with pytest.raises(ValueError, match="STREAMTMR_CACHE_MAX_SIZE: 'lots' is not a size"):
        cache.cached_tensors("demo", {"x": 1}, builder([]))


def test_the_cache_command_shows_prunes_and_clears(tmp_path, monkeypatch, capsys):
    from streamtmr.cli import main

    monkeypatch.setenv("STREAMTMR_CACHE", str(tmp_path))
    monkeypatch.setenv(cache.MAX_SIZE_ENV, "0")
    paths = [_entry("demo", x) for x in (1, 2, 3)]
    for i, path in enumerate(paths):
        _age(cache.sidecar(path), 300 - 100 * i)
    size = cache.entries()[0].size
    assert main(["cache", "--list"]) == 0
    out = capsys.readouterr().out
    assert "3 entries" in out and "no bound" in out and all(p.name in out for p in paths)
    assert main(["cache", "prune", "--max-size", str(2 * size)]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert [e.path for e in cache.entries()] == paths[1:]           # the oldest went
    assert main(["cache", "prune", "--max-size", "many"]) == 2
    assert "--max-size: 'many' is not a size" in capsys.readouterr().err
    assert main(["cache", "clear"]) == 0
    assert cache.entries() == [] and "removed 2 entries" in capsys.readouterr().out


def test_a_reader_that_leaves_early_ends_the_command_quietly(tmp_path, monkeypatch, capsys):
    """`streamtmr cache --list | head -1`: a closed pipe ends the command with 141 (128 +
    SIGPIPE, as a shell reports it), not a traceback."""
    import io
    import os
    import sys

    from streamtmr.cli import main

    monkeypatch.setenv("STREAMTMR_CACHE", str(tmp_path))
    _entry("demo", 1)
    read, write = os.pipe()
    os.close(read)                                     # the reader is gone
    out = io.TextIOWrapper(os.fdopen(write, "wb", buffering=0), write_through=True)
    monkeypatch.setattr(sys, "stdout", out)
    try:
        assert main(["cache", "--list"]) == 141
        print("after")                                 # stdout now goes nowhere, quietly
    finally:
        monkeypatch.undo()
        out.close()
    assert "Traceback" not in capsys.readouterr().err
