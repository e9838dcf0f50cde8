"""NTU RGB+D reader and denoiser: real samples, synthetic files, malformed input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamtmr import skeleton
from streamtmr.data.denoise import denoise
from streamtmr.data.ntu import NTUFormatError, NTUSequence, parse_filename, read_skeleton

REAL = Path(__file__).resolve().parents[2] / "shared/data/real"
NTU_DIR = REAL / "ntu_samples"
NTU_FILES = sorted(NTU_DIR.glob("*.skeleton"))
needs_real = pytest.mark.skipif(not NTU_FILES, reason=f"real NTU samples not found in {NTU_DIR}")


def file_structure(path: Path) -> tuple[int, list[list[str]], list[list[str]]]:
    """Independent walk of the layout: frame count, body id tokens per frame, and the first
    joint line's fields of every body (per frame)."""
    lines = path.read_text().splitlines()
    n_frames, i = int(lines[0]), 1
    ids, first_joint = [], []
    for _ in range(n_frames):
        n_bodies = int(lines[i])
        i += 1
        frame_ids, frame_joint = [], []
        for _ in range(n_bodies):
            frame_ids.append(lines[i].split()[0])
            assert lines[i + 1].strip() == "25"
            frame_joint.append(lines[i + 2].split())
            i += 2 + 25
        ids.append(frame_ids)
        first_joint.append(frame_joint)
    assert i == len(lines)
    return n_frames, ids, first_joint


def info_line(body_id: int) -> str:
    return f"{body_id} 0 1 1 1 1 0 0.01 -0.2 2"


def upright(rng: np.random.Generator, x0: float = 0.0) -> np.ndarray:
    """A plausible standing body: 0.5 m wide, 1.7 m tall, around x0."""
    j = np.stack([rng.uniform(-0.25, 0.25, 25) + x0, rng.uniform(-0.9, 0.8, 25),
                  rng.uniform(2.5, 2.8, 25)], axis=-1)
    j[0, 1], j[3, 1] = -0.9, 0.8  # pin the y-range so the body is clearly upright
    j[:, 0] = np.clip(j[:, 0], x0 - 0.25, x0 + 0.25)
    return j.astype(np.float32)


def write_ntu(path: Path, frames: list[list[tuple[int, np.ndarray]]]) -> Path:
    """Write a .skeleton file: per frame a list of (body id, joints [25, 3])."""
    out = [str(len(frames))]
    for bodies in frames:
        out.append(str(len(bodies)))
        for bid, joints in bodies:
            out += [info_line(bid), "25"]
            out += [f"{x:.7g} {y:.7g} {z:.7g} 250.1 180.2 900.3 500.4 0.1 0.2 0.3 0.9 2"
                    for x, y, z in joints]
    path.write_text("\r\n".join(out) + "\r\n")
    return path


# ------------------------------------------------------------------------------------------
# Real samples
# ------------------------------------------------------------------------------------------

@needs_real
@pytest.mark.parametrize("path", NTU_FILES, ids=lambda p: p.stem)
def test_real_sample_structure(path: Path):
    n_frames, ids, first_joint = file_structure(path)
    seq = read_skeleton(path)
    assert seq.path == path and seq.name == path.stem
    assert seq.joints.shape == (n_frames, seq.num_bodies, 25, 3)
    assert seq.joints.dtype == np.float32 and seq.state.dtype == np.uint8
    assert seq.state.shape == (n_frames, seq.num_bodies, 25)
    distinct = list(dict.fromkeys(t for frame in ids for t in frame))
    # body ids are exact 64-bit ints, in order of first appearance
    assert [str(b) for b in seq.body_ids] == distinct
    assert all(type(b) is int for b in seq.body_ids)
    assert seq.present.sum(axis=1).tolist() == [len(f) for f in ids]
    for f in (0, n_frames // 2, n_frames - 1):
        for tok, fields in zip(ids[f], first_joint[f], strict=True):
            k = seq.body_ids.index(int(tok))
            assert seq.present[f, k]
            np.testing.assert_array_equal(seq.joints[f, k, 0],
                                          np.array(fields[:3], dtype=np.float32))
            assert seq.state[f, k, 0] == int(fields[11])


@needs_real
def test_real_sample_body_counts():
    counts = {p.stem: len({t for frame in file_structure(p)[1] for t in frame})
              for p in NTU_FILES}
    assert counts["S001C003P008R002A058"] == 2
    assert all(n == 1 for name, n in counts.items() if not name.endswith("A058"))
    for p in NTU_FILES:
        assert read_skeleton(p).num_bodies == counts[p.stem]


@needs_real
@pytest.mark.parametrize("path", NTU_FILES, ids=lambda p: p.stem)
def test_real_sample_metadata(path: Path):
    n = path.stem
    expected = {"setup": int(n[1:4]), "camera": int(n[5:8]), "performer": int(n[9:12]),
                "replication": int(n[13:16]), "action": int(n[17:20])}
    assert parse_filename(path.name) == expected
    assert read_skeleton(path).meta == expected


@needs_real
@pytest.mark.parametrize("path", NTU_FILES, ids=lambda p: p.stem)
def test_real_sample_denoise_and_bones(path: Path):
    seq = read_skeleton(path)
    joints, info = denoise(seq)
    two_person = seq.meta["action"] >= 50
    assert info["n_actors"] == (2 if two_person else 1)
    assert joints.shape[1:] == (2, 25, 3)
    assert not info["dropped"]
    if not two_person:
        assert not joints[:, 1].any()
    for k in range(info["n_actors"]):
        med = np.median(skeleton.bone_lengths(joints[:, k])[:, 1:], axis=0)
        assert med.min() >= 0.02 and med.max() <= 0.6, med


@needs_real
def test_two_person_actor_order_follows_motion():
    seq = read_skeleton(NTU_DIR / "S001C003P008R002A058.skeleton")
    joints, info = denoise(seq)
    m = info["motion"]
    first, second = info["actors"][0][0], info["actors"][1][0]
    assert m[first] >= m[second]
    np.testing.assert_array_equal(joints[:, 0], seq.joints[:, seq.body_ids.index(first)])


# ------------------------------------------------------------------------------------------
# Synthetic files
# ------------------------------------------------------------------------------------------

def test_stable_slots_and_exact_ids(tmp_path: Path):
    rng = np.random.default_rng(0)
    a, b = 72057594037944738, 72057594037944739  # equal as float64: must stay two bodies
    assert float(a) == float(b)
    ja, jb = upright(rng), upright(rng, 1.0)
    frames = [[(a, ja)], [(a, ja), (b, jb)], [(b, jb), (a, ja)], [(b, jb)], []]
    seq = read_skeleton(write_ntu(tmp_path / "x.skeleton", frames))
    assert seq.body_ids == [a, b]
    assert seq.present.tolist() == [[1, 0], [1, 1], [1, 1], [0, 1], [0, 0]]
    np.testing.assert_allclose(seq.joints[2, 0], ja, atol=1e-6)
    np.testing.assert_allclose(seq.joints[2, 1], jb, atol=1e-6)
    assert not seq.joints[0, 1].any() and not seq.joints[4].any()
    assert seq.meta == {}
    assert (seq.state[seq.present] == 2).all() and (seq.state[~seq.present] == 0).all()


def test_parse_filename_rejects_other_names():
    assert parse_filename("S017C003P020R002A120.skeleton")["action"] == 120
    with pytest.raises(NTUFormatError, match="foo.skeleton"):
        parse_filename("foo.skeleton")
    with pytest.raises(NTUFormatError, match="S01C002"):
        parse_filename("S01C002P003R002A013")


# ------------------------------------------------------------------------------------------
# Malformed files
# ------------------------------------------------------------------------------------------

@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    frames = [[(7, upright(rng))] for _ in range(3)]
    return write_ntu(tmp_path / "S001C001P001R001A001.skeleton", frames)


def _rewrite(path: Path, lineno: int, new: str | None) -> Path:
    lines = path.read_text().splitlines()
    if new is None:
        del lines[lineno - 1]
    else:
        lines[lineno - 1] = new
    path.write_text("\n".join(lines) + "\n")
    return path


def _expect(path: Path, lineno: int, *words: str) -> None:
    with pytest.raises(NTUFormatError) as err:
        read_skeleton(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:{lineno}:"), msg
    for w in words:
        assert w in msg, msg


def test_malformed_wrong_joint_count(good_file: Path):
    # layout: 1 frame count, 2 body count, 3 info, 4 joint count, 5..29 joints, 30 body count
    _expect(_rewrite(good_file, 31 + 1, "24"), 32, "joint count 24")


def test_malformed_non_numeric_joint_field(good_file: Path):
    line = good_file.read_text().splitlines()[9].split()
    line[1] = "abc"
    _expect(_rewrite(good_file, 10, " ".join(line)), 10, "field y", "'abc'")


def test_malformed_non_numeric_later_field(good_file: Path):
    line = good_file.read_text().splitlines()[40].split()
    line[6] = "12x"
    _expect(_rewrite(good_file, 41, " ".join(line)), 41, "colorY", "'12x'")


def test_malformed_nan_position_and_state(good_file: Path):
    line = good_file.read_text().splitlines()[5].split()
    line[2] = "nan"
    _expect(_rewrite(good_file, 6, " ".join(line)), 6, "not finite")


def test_malformed_bad_tracking_state(good_file: Path):
    line = good_file.read_text().splitlines()[60].split()
    line[11] = "7"
    _expect(_rewrite(good_file, 61, " ".join(line)), 61, "trackingState")


def test_malformed_wrong_field_count(good_file: Path):
    line = good_file.read_text().splitlines()[6].split()
    _expect(_rewrite(good_file, 7, " ".join(line[:-1])), 7, "11 fields")


def test_malformed_info_line(good_file: Path):
    _expect(_rewrite(good_file, 3, "7 0 1 1"), 3, "body info line has 4 fields")
    _rewrite(good_file, 3, "7.5e3 0 1 1 1 1 0 0.01 -0.2 2")
    _expect(good_file, 3, "bodyID")


def test_malformed_counts(good_file: Path):
    _expect(_rewrite(good_file, 2, "x"), 2, "body count", "not an integer")
    _expect(_rewrite(good_file, 1, "3 3"), 1, "frame count")


def test_truncated_file(good_file: Path):
    lines = good_file.read_text().splitlines()
    good_file.write_text("\n".join(lines[:50]) + "\n")  # inside the second body's joints
    _expect(good_file, 51, "truncated")
    good_file.write_text("\n".join(lines[:29]) + "\n")  # a whole frame short
    _expect(good_file, 30, "truncated", "body count of frame 2/3")


@needs_real
def test_truncated_real_file(tmp_path: Path):
    src = NTU_FILES[0].read_bytes().splitlines(keepends=True)
    path = tmp_path / NTU_FILES[0].name
    path.write_bytes(b"".join(src[: len(src) // 2]))
    _expect(path, len(src) // 2 + 1, "truncated")


@needs_real
def test_real_file_errors(tmp_path: Path):
    lines = NTU_FILES[1].read_text().splitlines()
    path = tmp_path / NTU_FILES[1].name
    bad = list(lines)
    bad[3] = "20"
    path.write_text("\n".join(bad))
    _expect(path, 4, "joint count 20")
    bad = list(lines)
    bad[100] = bad[100].replace(" ", " zz", 1)
    path.write_text("\n".join(bad))
    _expect(path, 101)


def test_empty_and_trailing(tmp_path: Path, good_file: Path):
    empty = tmp_path / "empty.skeleton"
    empty.write_text("")
    _expect(empty, 1, "empty file")
    blank = tmp_path / "blank.skeleton"
    blank.write_text("\n \n")
    _expect(blank, 1, "empty file")
    good_file.write_text(good_file.read_text() + "\n\n")  # trailing blank lines are fine
    assert read_skeleton(good_file).num_frames == 3
    good_file.write_text(good_file.read_text() + "0\n")
    _expect(good_file, 88, "after the last")


def test_duplicate_body_in_frame(tmp_path: Path):
    rng = np.random.default_rng(2)
    path = write_ntu(tmp_path / "dup.skeleton", [[(5, upright(rng)), (5, upright(rng))]])
    _expect(path, 30, "appears twice")


def test_missing_file(tmp_path: Path):
    with pytest.raises(NTUFormatError, match="nope.skeleton"):
        read_skeleton(tmp_path / "nope.skeleton")


# ------------------------------------------------------------------------------------------
# Denoising rules (synthetic)
# ------------------------------------------------------------------------------------------

def make_seq(tracks: dict[int, tuple[range, np.ndarray]], n_frames: int) -> NTUSequence:
    """tracks: body id → (frames it is present in, joints [len(frames), 25, 3])."""
    ids = list(tracks)
    joints = np.zeros((n_frames, len(ids), 25, 3), np.float32)
    present = np.zeros((n_frames, len(ids)), bool)
    for k, (frames, j) in enumerate(tracks.values()):
        joints[list(frames), k] = j
        present[list(frames), k] = True
    return NTUSequence(joints, present[..., None].repeat(25, -1).astype(np.uint8) * 2, ids,
                       present)


def moving(rng: np.random.Generator, n: int, amp: float, x0: float = 0.0) -> np.ndarray:
    base = upright(rng, x0)
    shift = amp * np.sin(np.linspace(0, 6, n))[:, None, None] * np.array([1, 0, 0.5])
    return (base[None] + shift).astype(np.float32)


def test_denoise_length_rule():
    rng = np.random.default_rng(3)
    seq = make_seq({1: (range(0, 40), moving(rng, 40, 0.5)),
                    2: (range(5, 16), moving(rng, 11, 0.8, 1.0)),
                    3: (range(5, 17), moving(rng, 12, 0.05, -1.0))}, 40)
    joints, info = denoise(seq)
    assert info["dropped"] == {2: "length"}
    assert info["actors"] == [[1], [3]]
    assert joints.shape == (40, 2, 25, 3)


def test_denoise_spread_rule_and_last_body_kept():
    rng = np.random.default_rng(4)
    flat = moving(rng, 30, 0.2)
    flat[..., 0] *= 6.0   # 3 m wide ...
    flat[..., 1] *= 0.1   # ... and 17 cm tall: a table, not a person
    person = moving(rng, 30, 0.05, 1.0)
    joints, info = denoise(make_seq({1: (range(30), flat), 2: (range(30), person)}, 30))
    assert info["dropped"] == {1: "spread"} and info["n_actors"] == 1
    np.testing.assert_array_equal(joints[:, 0], person)
    joints, info = denoise(make_seq({1: (range(30), flat)}, 30))
    assert info["dropped"] == {} and info["n_actors"] == 1


def test_denoise_merges_disjoint_spans_and_drops_overlaps():
    rng = np.random.default_rng(5)
    seq = make_seq({10: (range(0, 30), moving(rng, 30, 1.0)),
                    11: (range(30, 60), moving(rng, 30, 0.8)),       # same person, new id
                    12: (range(0, 60), moving(rng, 60, 0.5, 1.0)),
                    13: (range(10, 50), moving(rng, 40, 0.05, -1.0))}, 60)
    joints, info = denoise(seq)
    assert info["actors"][0] == [10, 11] and info["actors"][1] == [12]
    assert info["dropped"] == {13: "overlap"}
    np.testing.assert_array_equal(joints[30:, 0], seq.joints[30:, 1])
    joints3, info3 = denoise(seq, max_actors=3)
    assert info3["actors"][2] == [13] and joints3.shape == (60, 3, 25, 3)


def test_denoise_removes_empty_frames_and_rejects_empty():
    rng = np.random.default_rng(6)
    seq = make_seq({1: (list(range(0, 20)) + list(range(25, 40)), moving(rng, 35, 0.1))}, 45)
    joints, info = denoise(seq)
    assert joints.shape[0] == 35 and info["removed_frames"] == 10
    assert info["kept_frames"].tolist() == list(range(0, 20)) + list(range(25, 40))
    with pytest.raises(ValueError, match="no body"):
        denoise(make_seq({1: (range(5), moving(rng, 5, 0.1))}, 5))
