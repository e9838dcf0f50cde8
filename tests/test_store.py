import json

import numpy as np
import pytest

from streamtmr.data.store import SkeletonStore, StoreError, StoreWriter


def _write(root, lengths=(5, 3, 7)):
    rng = np.random.default_rng(0)
    seqs = [rng.normal(size=(n, 25, 3)).astype(np.float32) for n in lengths]
    with StoreWriter(root, {"joints": (25, 3), "target": (25, 3)}, meta={"name": "t"}) as w:
        for i, s in enumerate(seqs):
            w.append({"joints": s, "target": s * 2}, subject=i, action=10 + i, name=f"seq{i}")
    return seqs


def test_roundtrip(tmp_path):
    seqs = _write(tmp_path)
    store = SkeletonStore(tmp_path)
    assert len(store) == 3 and store.meta["frames"] == 15 and store.meta["name"] == "t"
    for s, item in zip(seqs, store):
        assert np.array_equal(item.joints, s)
        assert np.array_equal(item.arrays["target"], s * 2)
    assert store.column("action").tolist() == [10, 11, 12]
    assert store[1].meta["name"] == "seq1"
    assert isinstance(store.array("joints"), np.memmap)
    with pytest.raises(KeyError, match="nope"):
        store.column("nope")


def test_refuses_overwrite_and_bad_shapes(tmp_path):
    _write(tmp_path)
    with pytest.raises(StoreError, match="already exists"):
        StoreWriter(tmp_path, {"joints": (25, 3)})
    w = StoreWriter(tmp_path / "b", {"joints": (25, 3), "target": (25, 3)})
    with pytest.raises(StoreError, match="frame shape"):
        w.append({"joints": np.zeros((4, 20, 3)), "target": np.zeros((4, 25, 3))})
    with pytest.raises(StoreError, match="frames, expected"):
        w.append({"joints": np.zeros((4, 25, 3)), "target": np.zeros((3, 25, 3))})
    with pytest.raises(StoreError, match="lacks array"):
        w.append({"joints": np.zeros((4, 25, 3))})


def test_corrupt_store_names_the_file(tmp_path):
    _write(tmp_path)
    with open(tmp_path / "target.f32", "r+b") as f:
        f.truncate(100)
    with pytest.raises(StoreError, match="target.f32"):
        SkeletonStore(tmp_path)
    (tmp_path / "meta.json").write_text("{nope")
    with pytest.raises(StoreError, match="meta.json"):
        SkeletonStore(tmp_path)
    with pytest.raises(StoreError, match="not found"):
        SkeletonStore(tmp_path / "missing")


def test_index_past_end(tmp_path):
    _write(tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["frames"] = 10
    for name in ("joints", "target"):
        raw = (tmp_path / f"{name}.f32").read_bytes()
        (tmp_path / f"{name}.f32").write_bytes(raw[: 10 * 75 * 4])
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="runs past the end"):
        SkeletonStore(tmp_path)


def test_rows_of_a_split_and_a_camera(tmp_path):
    """rows_of: the rows of a split's people in store order, one camera's with ``view``; an
    unknown split is refused by name."""
    rng = np.random.default_rng(0)
    with StoreWriter(tmp_path, {"joints": (25, 3)},
                     meta={"splits": {"train": [0, 2], "eval": [1]}}) as w:
        for subject, view in ((0, 0), (1, 0), (2, 45), (0, 45), (2, 0)):
            w.append({"joints": rng.normal(size=(2, 25, 3)).astype(np.float32)},
                     subject=subject, view=view)
    store = SkeletonStore(tmp_path)
    assert [(r["subject"], r["view"]) for r in store.rows_of("train")] == [
        (0, 0), (2, 45), (0, 45), (2, 0)]
    assert [(r["subject"], r["view"]) for r in store.rows_of("train", view=0)] == [(0, 0), (2, 0)]
    assert [r["subject"] for r in store.rows_of("eval", view=45)] == []
    with pytest.raises(KeyError, match="'test'.*eval"):
        store.rows_of("test")
