"""Windowing functions and the store-backed window datasets."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamtmr.data.datasets import WindowDataset, label_table, load_windows
from streamtmr.data.store import SkeletonStore, StoreWriter
from streamtmr.data.windows import (
    crop,
    crop_start,
    num_windows,
    pad_to,
    sliding_windows,
    trailing_windows,
    window_starts,
    windows_at,
)


def ramp(n: int) -> np.ndarray:
    """[n, 25, 3] whose every value is the frame index: crops are readable from the values."""
    return np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, 25, 3)).copy()


# ------------------------------------------------------------------------------------------
# windows
# ------------------------------------------------------------------------------------------

def test_pad_to_repeats_last_frame():
    out = pad_to(ramp(5), 8)
    assert out.shape == (8, 25, 3)
    assert out[:, 0, 0].tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
    long = ramp(10)
    assert pad_to(long, 8) is long
    t = pad_to(torch.from_numpy(ramp(3)), 5)
    assert isinstance(t, torch.Tensor) and t[:, 0, 0].tolist() == [0, 1, 2, 2, 2]
    with pytest.raises(ValueError, match="empty"):
        pad_to(np.zeros((0, 25, 3)), 4)


def test_pad_to_along_the_frame_axis_of_a_batch():
    batch = np.stack([ramp(3), ramp(3) + 10])  # [2, 3, 25, 3]
    out = pad_to(batch, 5, axis=1)
    assert out.shape == (2, 5, 25, 3)
    assert out[1, :, 0, 0].tolist() == [10, 11, 12, 12, 12]
    t = pad_to(torch.from_numpy(batch), 5, axis=1)
    assert torch.equal(t, torch.from_numpy(out))


def test_windows_at_and_trailing_windows():
    assert windows_at(ramp(6), np.array([0, 2]), 3)[:, :, 0, 0].tolist() == [[0, 1, 2],
                                                                          [2, 3, 4]]
    w = trailing_windows(ramp(5), 3)
    assert w.shape == (5, 3, 25, 3)
    assert w[0, :, 0, 0].tolist() == [0, 0, 0]  # padded at the front by the first frame
    assert w[4, :, 0, 0].tolist() == [2, 3, 4]  # window t ends at frame t
    assert np.array_equal(w[:, -1], ramp(5))
    assert torch.equal(trailing_windows(torch.from_numpy(ramp(5)), 3), torch.from_numpy(w))


def test_crop_policies():
    seq = ramp(100)
    assert crop(seq, 64, "start")[:, 0, 0].tolist() == list(range(64))
    assert crop(seq, 64, "center")[0, 0, 0] == 18
    assert crop(seq, 64)[0, 0, 0] == 18   # center is the default
    starts = {int(crop(seq, 64, "random", np.random.default_rng(s))[0, 0, 0]) for s in range(60)}
    assert starts <= set(range(37)) and len(starts) > 10
    a = crop(seq, 64, "random", np.random.default_rng(3))
    b = crop(seq, 64, "random", np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    short = crop(ramp(10), 64, "random", np.random.default_rng(0))
    assert short.shape == (64, 25, 3) and short[-1, 0, 0] == 9
    with pytest.raises(ValueError, match="crop policy"):
        crop(seq, 64, "middle")


def test_sliding_windows_last_aligned_to_end():
    w = sliding_windows(ramp(100), 64, 16)
    assert w.shape == (4, 64, 25, 3)
    assert w[:, 0, 0, 0].tolist() == [0, 16, 32, 36]
    assert w[-1, -1, 0, 0] == 99
    assert num_windows(100, 64, 16) == 4
    assert window_starts(64, 64, 16).tolist() == [0]
    one = sliding_windows(ramp(10), 64, 8)
    assert one.shape == (1, 64, 25, 3) and one[0, -1, 0, 0] == 9
    t = sliding_windows(torch.from_numpy(ramp(70)), 64, 3)
    assert t.shape == (3, 64, 25, 3) and t[:, 0, 0, 0].tolist() == [0, 3, 6]
    with pytest.raises(ValueError, match="stride"):
        sliding_windows(ramp(10), 4, 0)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 150), T=st.integers(1, 80), stride=st.integers(1, 40))
def test_sliding_windows_properties(n: int, T: int, stride: int):
    seq = ramp(n)
    w = sliding_windows(seq, T, stride)
    starts = window_starts(n, T, stride)
    assert w.shape == (num_windows(n, T, stride), T, 25, 3) == (len(starts), T, 25, 3)
    assert starts[0] == 0 and starts[-1] == max(n - T, 0)
    assert (np.diff(starts) > 0).all() and (np.diff(starts) <= stride).all()
    if stride <= T:                                     # then every frame is in some window
        covered = np.unique(np.clip(starts[:, None] + np.arange(T), 0, n - 1))
        assert covered.tolist() == list(range(n))
    for k, s in enumerate(starts):
        expected = np.minimum(np.arange(s, s + T), n - 1)
        np.testing.assert_array_equal(w[k, :, 0, 0], expected)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 150), T=st.integers(1, 80), seed=st.integers(0, 2**16),
       policy=st.sampled_from(["center", "start", "random"]))
def test_crop_properties(n: int, T: int, seed: int, policy: str):
    out = crop(ramp(n), T, policy, np.random.default_rng(seed))
    assert out.shape == (T, 25, 3)
    first = int(out[0, 0, 0])
    assert first == crop_start(n, T, policy, np.random.default_rng(seed))
    assert 0 <= first <= max(n - T, 0)
    np.testing.assert_array_equal(out[:, 0, 0], np.minimum(np.arange(first, first + T), n - 1))


# ------------------------------------------------------------------------------------------
# datasets
# ------------------------------------------------------------------------------------------

LENGTHS = [100, 40, 64, 80, 130]


@pytest.fixture
def store(tmp_path: Path) -> SkeletonStore:
    """5 sequences: joints = frame index + 1000·sequence, target = joints + 0.5."""
    with StoreWriter(tmp_path / "s", {"joints": (25, 3), "target": (25, 3)},
                     {"labels": {"sex": ["M", "F"]}}) as w:
        for k, n in enumerate(LENGTHS):
            j = ramp(n) + 1000 * k
            w.append({"joints": j, "target": j + 0.5}, name=f"q{k}", subject=k % 3 + 1,
                     action=10 + k, view=1, sex="F" if k % 2 else "M")
    return SkeletonStore(tmp_path / "s")


def test_dataset_items_share_one_crop(store: SkeletonStore):
    ds = WindowDataset(store, window=64, crop="random", arrays=("joints", "target"), seed=1)
    assert len(ds) == 5
    for i in range(5):
        item = ds[i]
        assert set(item) == {"joints", "target", "subject", "action", "view", "sex"}
        assert item["joints"].shape == (64, 25, 3) and item["joints"].dtype == torch.float32
        torch.testing.assert_close(item["target"] - item["joints"],
                                   torch.full((64, 25, 3), 0.5))
        frames = item["joints"][:, 0, 0] - 1000 * i
        start = int(frames[0])
        assert 0 <= start <= max(LENGTHS[i] - 64, 0)
        expected = np.minimum(np.arange(start, start + 64), LENGTHS[i] - 1)
        assert frames.tolist() == expected.tolist()
        assert item["action"].dtype == torch.long and item["action"].shape == ()
        assert int(item["action"]) == 10 + i and int(item["subject"]) == i % 3 + 1
        assert int(item["sex"]) == (1 if i % 2 else 0)   # mapped through meta labels M, F


def test_dataset_random_crops_are_reproducible_and_change_per_epoch(store: SkeletonStore):
    a = WindowDataset(store, window=16, crop="random", seed=5)
    b = WindowDataset(store, window=16, crop="random", seed=5)
    first = [int(a[i]["joints"][0, 0, 0]) for i in range(5)]
    assert first == [int(b[i]["joints"][0, 0, 0]) for i in range(5)]
    seen = set()
    for epoch in range(8):
        a.set_epoch(epoch)
        seen.add(tuple(int(a[i]["joints"][0, 0, 0]) for i in range(5)))
    assert len(seen) > 1
    c = WindowDataset(store, window=16, crop="center")
    assert int(c[4]["joints"][0, 0, 0]) == 4000 + (130 - 16) // 2


def test_dataset_pickles_by_path(store: SkeletonStore):
    ds = WindowDataset(store, window=16, crop="random", seed=2, arrays=("joints", "target"))
    ds.set_epoch(3)
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000          # the frames themselves are not in the pickle
    back = pickle.loads(blob)
    assert back.store.root == store.root and back.epoch == 3
    for i in range(len(ds)):
        for k, v in ds[i].items():
            torch.testing.assert_close(back[i][k], v)


def test_dataset_subject_filter_and_loader(store: SkeletonStore):
    ds = WindowDataset(store, window=32, crop="center", subjects=[1, 3])
    assert ds.indices.tolist() == [0, 2, 3]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["joints"].shape == (3, 32, 25, 3)
    assert batch["subject"].tolist() == [1, 3, 1]
    with pytest.raises(ValueError, match="no array 'joints9'"):
        WindowDataset(store, arrays=("joints9",))
    with pytest.raises(ValueError, match="crop policy"):
        WindowDataset(store, crop="middle")
    with pytest.raises(IndexError):
        ds[3]


def test_label_mapping_without_declared_names(tmp_path: Path):
    with StoreWriter(tmp_path / "s", {"joints": (25, 3)}) as w:
        for sex in ("M", "F", "M"):
            w.append({"joints": ramp(3)}, subject=1, sex=sex)
    labels, names = label_table(SkeletonStore(tmp_path / "s"))
    assert names == {"sex": ["F", "M"]}
    assert labels["sex"].tolist() == [1, 0, 1] and labels["subject"].tolist() == [1, 1, 1]


def test_load_windows(store: SkeletonStore):
    out = load_windows(store, 64, arrays=("joints", "target"))
    assert out["joints"].shape == (5, 64, 25, 3) and out["joints"].dtype == np.float32
    assert out["start"].tolist() == [18, 0, 0, 8, 33]
    assert out["joints"][:, 0, 0, 0].tolist() == [18, 1000, 2000, 3008, 4033]
    np.testing.assert_array_equal(out["target"] - out["joints"], 0.5)
    assert out["action"].tolist() == [10, 11, 12, 13, 14]
    sl = load_windows(store, 64, subjects=[2], stride=32)
    assert sl["sequence"].tolist() == [1, 4, 4, 4, 4]
    assert sl["start"].tolist() == [0, 0, 32, 64, 66]
    assert sl["joints"][0, -1, 0, 0] == 1039            # the short sequence is padded
    assert sl["joints"][-1, -1, 0, 0] == 4129 and sl["subject"].tolist() == [2] * 5
