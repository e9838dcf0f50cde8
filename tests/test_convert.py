"""Raw recordings → store: NTU folder (streamed, corrupt files skipped) and UTKinect."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from streamtmr.data.convert import convert_ntu_folder, convert_utkinect
from streamtmr.data.datasets import WindowDataset
from streamtmr.data.denoise import denoise
from streamtmr.data.ntu import parse_filename, read_skeleton
from streamtmr.data.store import SkeletonStore, StoreError
from streamtmr.data.utkinect import ACTIONS, read_utkinect

REAL = Path(__file__).resolve().parents[2] / "shared/data/real"
NTU_FILES = sorted((REAL / "ntu_samples").glob("*.skeleton"))
UTK_DIR = REAL / "utkinect"
needs_ntu = pytest.mark.skipif(not NTU_FILES, reason=f"real NTU samples not found in {REAL}")
needs_utk = pytest.mark.skipif(not (UTK_DIR / "actionLabel.txt").is_file(),
                               reason=f"UTKinect-Action3D not found in {UTK_DIR}")


@pytest.fixture
def ntu_folder(tmp_path: Path) -> Path:
    """The 5 real files (one in a sub-folder) plus a truncated copy and a misnamed copy."""
    src = tmp_path / "raw"
    (src / "part2").mkdir(parents=True)
    for k, f in enumerate(NTU_FILES):
        shutil.copy(f, (src / "part2" if k == 3 else src) / f.name)
    lines = NTU_FILES[0].read_bytes().splitlines(keepends=True)
    (src / "S009C001P001R001A001.skeleton").write_bytes(b"".join(lines[:200]))
    shutil.copy(NTU_FILES[0], src / "renamed.skeleton")
    return src


@needs_ntu
def test_ntu_folder_round_trip(ntu_folder: Path, tmp_path: Path):
    out = convert_ntu_folder(ntu_folder, tmp_path / "store", progress=False)
    store = SkeletonStore(out)
    assert store.array_names == ["joints", "joints2"]
    assert [r["name"] for r in store.rows] == [f.stem for f in NTU_FILES]
    for seq, f in zip(store, NTU_FILES, strict=True):
        raw = read_skeleton(f)
        joints, info = denoise(raw)
        np.testing.assert_array_equal(seq.arrays["joints"], joints[:, 0])
        np.testing.assert_array_equal(seq.arrays["joints2"], joints[:, 1])
        ids = parse_filename(f.name)
        m = seq.meta
        assert {k: m[k] for k in ids} == ids
        assert (m["subject"], m["view"], m["rep"]) == (ids["performer"], ids["camera"],
                                                       ids["replication"])
        assert m["n_actors"] == info["n_actors"] == (2 if ids["action"] == 58 else 1)
        assert m["frames_raw"] == raw.num_frames and m["bodies"] == raw.num_bodies
        assert m["dropped_length"] == m["dropped_spread"] == m["dropped_overlap"] == 0
        if m["n_actors"] == 1:
            assert not seq.arrays["joints2"].any()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["skipped_count"] == 2 and meta["files"] == 7
    skipped = {Path(s["file"]).name: s["error"] for s in meta["skipped"]}
    assert set(skipped) == {"S009C001P001R001A001.skeleton", "renamed.skeleton"}
    assert ":201: truncated" in skipped["S009C001P001R001A001.skeleton"]
    assert "not an NTU RGB+D sample name" in skipped["renamed.skeleton"]
    assert meta["skeleton"] == "kinect_v2" and meta["denoise"]["max_actors"] == 2
    # the store feeds the datasets directly
    item = WindowDataset(store, 64, crop="center", arrays=("joints", "joints2"))[1]
    assert item["joints2"].abs().sum() > 0 and int(item["action"]) == 58


@needs_ntu
def test_ntu_folder_window_and_overwrite(ntu_folder: Path, tmp_path: Path):
    out = convert_ntu_folder(ntu_folder, tmp_path / "store", progress=False, window=80)
    store = SkeletonStore(out)
    kept = [f.stem for f in NTU_FILES if len(denoise(read_skeleton(f))[0]) >= 80]
    assert [r["name"] for r in store.rows] == kept and 0 < len(kept) < 5
    meta = json.loads((out / "meta.json").read_text())
    assert meta["skipped_count"] == 2 + 5 - len(kept)
    assert any("shorter than the window (80)" in s["error"] for s in meta["skipped"])
    with pytest.raises(StoreError, match="already exists"):
        convert_ntu_folder(ntu_folder, out, progress=False)
    convert_ntu_folder(ntu_folder, out, progress=True, overwrite=True)
    assert len(SkeletonStore(out)) == 5


def test_ntu_folder_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        convert_ntu_folder(tmp_path / "nope", tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .skeleton files"):
        convert_ntu_folder(tmp_path / "empty", tmp_path / "out", progress=False)


@needs_utk
def test_utkinect_store(tmp_path: Path):
    out = convert_utkinect(UTK_DIR, tmp_path / "utk")
    store = SkeletonStore(out)
    seqs = read_utkinect(UTK_DIR)
    assert len(store) == len(seqs) == 199
    meta = json.loads((out / "meta.json").read_text())
    assert meta["missing"] == ["s10_e02 carry"] and meta["labels"]["action"] == list(ACTIONS)
    for row, q in zip(store, seqs, strict=True):
        np.testing.assert_array_equal(row.joints, q.joints)
        assert (row.meta["subject"], row.meta["rep"], row.meta["action"]) == (
            q.subject, q.execution, q.action_index)
    assert sorted(set(store.column("subject"))) == list(range(1, 11))
    assert np.bincount(store.column("action")).tolist() == [20] * 4 + [19] + [20] * 5
    with pytest.raises(StoreError, match="already exists"):
        convert_utkinect(UTK_DIR, out)
