"""UTKinect-Action3D reader: the real release and malformed folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from streamtmr import skeleton
from streamtmr.data.utkinect import (
    ACTIONS,
    UTKFormatError,
    on_sensor_clock,
    read_action_labels,
    read_joints_file,
    read_utkinect,
)

REAL = Path(__file__).resolve().parents[2] / "shared/data/real"
UTK_DIR = REAL / "utkinect"
needs_real = pytest.mark.skipif(not (UTK_DIR / "actionLabel.txt").is_file(),
                                reason=f"UTKinect-Action3D not found in {UTK_DIR}")


def raw_label_blocks(path: Path) -> dict[str, dict[str, list[str]]]:
    """Independent parse of the label file: run name → action → the two bound strings."""
    blocks: dict[str, dict[str, list[str]]] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        if ":" not in line:
            run = blocks.setdefault(line.strip(), {})
        else:
            name, rest = line.split(":")
            run[name.strip()] = rest.split()
    return blocks


@pytest.fixture(scope="module")
def real_sequences():
    if not (UTK_DIR / "actionLabel.txt").is_file():
        pytest.skip(f"UTKinect-Action3D not found in {UTK_DIR}")
    return read_utkinect(UTK_DIR)


@needs_real
def test_labels_cover_ten_subjects_two_runs_ten_actions():
    labels = read_action_labels(UTK_DIR / "actionLabel.txt")
    assert sorted(labels) == [(s, e) for s in range(1, 11) for e in (1, 2)]
    raw = raw_label_blocks(UTK_DIR / "actionLabel.txt")
    for (s, e), run in labels.items():
        assert list(run) == list(ACTIONS)
        for action, bounds in run.items():
            text = raw[f"s{s:02d}_e{e:02d}"][action]
            if "NaN" in text:
                assert bounds is None
            else:
                assert bounds == (int(text[0]), int(text[1]))


@needs_real
def test_all_segments_read(real_sequences):
    raw = raw_label_blocks(UTK_DIR / "actionLabel.txt")
    nan_segments = {(run, a) for run, acts in raw.items() for a, b in acts.items() if "NaN" in b}
    assert nan_segments == {("s10_e02", "carry")}
    assert len(real_sequences) == 20 * 10 - len(nan_segments)
    got = {(f"s{q.subject:02d}_e{q.execution:02d}", q.action) for q in real_sequences}
    assert not got & nan_segments
    keys = [(q.subject, q.execution, q.action_index) for q in real_sequences]
    assert keys == sorted(keys)
    for q in real_sequences:
        assert ACTIONS[q.action_index] == q.action
        assert q.name == f"s{q.subject:02d}_e{q.execution:02d}_{q.action}"


@needs_real
def test_segment_frames_and_values(real_sequences):
    raw = raw_label_blocks(UTK_DIR / "actionLabel.txt")
    for q in real_sequences:
        T = len(q.frame_ids)
        assert T >= 1
        assert q.joints20.shape == (T, 20, 3) and q.joints.shape == (T, 25, 3)
        assert q.joints20.dtype == np.float32 and q.joints.dtype == np.float32
        assert (np.diff(q.frame_ids) > 0).all()          # duplicates removed, in order
        lo, hi = (int(v) for v in raw[f"s{q.subject:02d}_e{q.execution:02d}"][q.action])
        assert lo <= q.frame_ids[0] and q.frame_ids[-1] <= hi
    # values equal the file's first row of each frame id (independent loadtxt)
    table = np.loadtxt(UTK_DIR / "joints_s03_e02.txt")
    for q in (q for q in real_sequences if (q.subject, q.execution) == (3, 2)):
        for fid, j in zip(q.frame_ids[:5], q.joints20[:5], strict=True):
            row = table[np.flatnonzero(table[:, 0] == fid)[0], 1:].reshape(20, 3)
            np.testing.assert_array_equal(j, row.astype(np.float32))
        inside = np.unique(table[(table[:, 0] >= q.frame_ids[0])
                                 & (table[:, 0] <= q.frame_ids[-1]), 0])
        assert len(inside) == len(q.frame_ids)


@needs_real
def test_mapping_to_25_joints(real_sequences):
    joints = np.concatenate([q.joints for q in real_sequences])
    j20 = np.concatenate([q.joints20 for q in real_sequences])
    np.testing.assert_array_equal(joints[:, skeleton.JOINT["SpineBase"]], j20[:, 0])
    np.testing.assert_array_equal(joints[:, skeleton.JOINT["Head"]], j20[:, 3])
    np.testing.assert_array_equal(joints[:, skeleton.JOINT["FootRight"]], j20[:, 19])
    med = np.median(skeleton.bone_lengths(joints)[:, 1:], axis=0)
    assert med.min() >= 0.02 and med.max() <= 0.6, med
    # heads are above feet: y is up
    assert (joints[:, skeleton.JOINT["Head"], 1] > joints[:, skeleton.JOINT["FootLeft"], 1]).all()


@needs_real
def test_duplicate_frame_ids_keep_first_row():
    ids, joints = read_joints_file(UTK_DIR / "joints_s09_e01.txt")
    table = np.loadtxt(UTK_DIR / "joints_s09_e01.txt")
    assert len(ids) == len(np.unique(table[:, 0])) < len(table)
    dup = int(table[np.flatnonzero(np.diff(table[:, 0]) == 0)[0], 0])
    first = table[np.flatnonzero(table[:, 0] == dup)[0], 1:].reshape(20, 3)
    np.testing.assert_array_equal(joints[np.flatnonzero(ids == dup)[0]], first.astype(np.float32))


# ------------------------------------------------------------------------------------------
# Malformed folders
# ------------------------------------------------------------------------------------------

def _row(fid: int, rng: np.random.Generator) -> str:
    return f"{fid}  " + "  ".join(f"{v:.6f}" for v in rng.uniform(-1, 2, 60)) + "  "


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A folder with one run: frames 10..40 step 2 (frame 20 written twice)."""
    rng = np.random.default_rng(0)
    ids = list(range(10, 42, 2))
    ids.insert(ids.index(20), 20)
    (tmp_path / "joints_s01_e01.txt").write_text("\n".join(_row(i, rng) for i in ids) + "\n")
    lines = ["s01_e01", "walk: 10 20", "sitDown:  NaN NaN", "standUp: 22 25 ",
             "throw: 30 40"]
    (tmp_path / "actionLabel.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_tiny_folder(tiny: Path):
    seqs = read_utkinect(tiny)
    assert [q.action for q in seqs] == ["walk", "standUp", "throw"]
    assert seqs[0].frame_ids.tolist() == [10, 12, 14, 16, 18, 20]
    assert seqs[1].frame_ids.tolist() == [22, 24]
    assert read_action_labels(tiny / "actionLabel.txt")[(1, 1)]["sitDown"] is None


def _expect(path: Path, lineno: int | None, *words: str, root: Path | None = None) -> None:
    with pytest.raises(UTKFormatError) as err:
        read_utkinect(root) if root is not None else read_joints_file(path)
    msg = str(err.value)
    prefix = f"{path}:{lineno}:" if lineno is not None else f"{path}"
    assert msg.startswith(prefix), msg
    for w in words:
        assert w in msg, msg


def _set_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


def test_bad_joint_rows(tiny: Path):
    f = tiny / "joints_s01_e01.txt"
    good = f.read_text()
    _set_line(f, 4, " ".join(f.read_text().splitlines()[3].split()[:-1]))
    _expect(f, 4, "60 fields")
    f.write_text(good)
    tok = good.splitlines()[6].split()
    tok[7] = "1.2.3"
    _set_line(f, 7, " ".join(tok))
    _expect(f, 7, "field 8", "'1.2.3'")
    f.write_text(good)
    tok = good.splitlines()[2].split()
    tok[0] = "2"
    _set_line(f, 3, " ".join(tok))
    _expect(f, 3, "must not decrease")
    f.write_text(good)
    tok = good.splitlines()[1].split()
    tok[5] = "inf"
    _set_line(f, 2, " ".join(tok))
    _expect(f, 2, "non-finite")
    f.write_text("\n\n")
    _expect(f, None, "no joint rows")


def test_bad_label_files(tiny: Path):
    lab = tiny / "actionLabel.txt"
    good = lab.read_text()
    _set_line(lab, 2, "walking: 10 20")
    _expect(lab, 2, "walking", root=tiny)
    lab.write_text(good)
    _set_line(lab, 2, "walk: 10")
    _expect(lab, 2, "two frame ids", root=tiny)
    lab.write_text(good)
    _set_line(lab, 2, "walk: 30 10")
    _expect(lab, 2, "start <= end", root=tiny)
    lab.write_text(good)
    _set_line(lab, 2, "walk: ten 20")
    _expect(lab, 2, "not numbers", root=tiny)
    lab.write_text(good + "walk: 1 2\n")
    _expect(lab, 6, "appears twice", root=tiny)
    lab.write_text("walk: 1 2\n" + good)
    _expect(lab, 1, "before the first", root=tiny)
    lab.write_text(good.replace("throw: 30 40", "throw: 100 120"))
    _expect(lab, None, "holds no frame", root=tiny)


def test_missing_files(tiny: Path):
    shutil.copy(tiny / "joints_s01_e01.txt", tiny / "joints_s02_e01.txt")
    _expect(tiny / "joints_s02_e01.txt", None, "no s02_e01 block", root=tiny)
    (tiny / "joints_s02_e01.txt").unlink()
    (tiny / "joints_s01_e01.txt").unlink()
    _expect(tiny / "joints_s01_e01.txt", None, "not found", root=tiny)
    (tiny / "actionLabel.txt").unlink()
    _expect(tiny / "actionLabel.txt", None, "not found", root=tiny)


def test_sensor_clock_interpolates_the_skipped_frames():
    rows = np.arange(3 * 2 * 3, dtype=np.float32).reshape(3, 2, 3) ** 2
    ids = np.array([10, 12, 16])
    dense = on_sensor_clock(rows, ids)
    assert dense.shape == (7, 2, 3) and dense.dtype == np.float32
    assert np.array_equal(dense[ids - 10], rows)          # the recorded rows, bit for bit
    np.testing.assert_allclose(dense[1], (rows[0] + rows[1]) / 2, rtol=1e-6)
    np.testing.assert_allclose(dense[3], 0.75 * rows[1] + 0.25 * rows[2], rtol=1e-6)
    assert np.array_equal(on_sensor_clock(rows[:1], ids[:1]), rows[:1])
    with pytest.raises(ValueError, match="increase strictly"):
        on_sensor_clock(rows, np.array([10, 10, 12]))
    with pytest.raises(ValueError, match="2 frame ids for 3 rows"):
        on_sensor_clock(rows, ids[:2])
