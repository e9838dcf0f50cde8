"""Offline anonymization: windows, seamless stitching, files and the ``anonymize`` command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engines import create_engine
from streamtmr import cli, skeleton
from streamtmr.data.windows import window_starts
from streamtmr.dummy import default_dummy
from streamtmr.models.checkpoint import save_checkpoint
from streamtmr.models.registry import available, model_class
from streamtmr.offline import anonymize_sequence, anonymize_sequences, load_sequences, stitch

REAL = Path(__file__).resolve().parents[2] / "shared/data/real"
NTU = REAL / "ntu_samples"
DUMMY = default_dummy().lengths


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMTMR_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)


def tiny(method: str):
    available()
    torch.manual_seed(0)
    return model_class(method).from_preset("tiny")


def motion(frames: int, scale: float = 0.9, seed: int = 0) -> np.ndarray:
    """Smooth synthetic motion of a body with constant bone lengths (``scale`` × dummy)."""
    rng = np.random.default_rng(seed)
    dirs = skeleton.bone_directions(default_dummy().rest_pose())
    t = np.arange(frames, dtype=np.float32)[:, None, None]
    d = dirs + 0.4 * np.sin(0.08 * t + rng.uniform(0, 6, (1, 25, 3)))
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    f = np.arange(frames, dtype=np.float32)
    root = np.stack([0.01 * f, 0.9 + 0 * f, 3 + 0.3 * np.sin(0.02 * f)], -1)
    return skeleton.forward_kinematics(root, d.astype(np.float32), DUMMY * scale
                                       ).astype(np.float32)


def jumps(seq: np.ndarray) -> np.ndarray:
    """Largest joint displacement between consecutive frames: ``[frames - 1]``."""
    return np.linalg.norm(np.diff(seq, axis=0), axis=-1).max(-1)


def join_frames(starts: np.ndarray, T: int, length: int) -> np.ndarray:
    """Indices into :func:`jumps` at every window start and end (the possible seams)."""
    idx = np.concatenate([starts[1:] - 1, starts[:-1] + T - 1])
    return np.unique(np.clip(idx, 0, length - 2))


def test_stitch_removes_per_window_offsets_and_keeps_dummy_bones():
    T, L = 16, 100
    truth = skeleton.set_bone_lengths(motion(L), DUMMY)
    starts = window_starts(L, T, T // 2)
    rng = np.random.default_rng(1)
    outputs = np.stack([truth[s:s + T] + rng.normal(0, 0.3, 3).astype(np.float32)
                        for s in starts])  # each window displaced by its own constant offset
    y = stitch(outputs, starts, L, DUMMY)
    assert y.shape == (L, 25, 3)
    j, seams = jumps(y), join_frames(starts, T, L)
    others = np.setdiff1d(np.arange(L - 1), seams)
    assert j[seams].max() <= 1.05 * j[others].max()
    np.testing.assert_allclose(y - y[:1], truth - truth[:1], atol=1e-4)  # only the offset left
    np.testing.assert_allclose(skeleton.bone_lengths(y)[:, 1:], np.broadcast_to(DUMMY[1:],
                                                                                (L, 24)),
                               atol=1e-5)
    hard = np.concatenate([outputs[0]] + [o[T // 2:] for o in outputs[1:-1]])
    assert jumps(hard).max() > 2 * j.max()  # what stitching prevents


def test_naive_stitched_equals_whole_sequence():
    """Constant source bones: the stitched naive retarget is the whole-sequence one."""
    engine = create_engine("onnxruntime", model=tiny("naive"), window=32, max_batch=4)
    x = motion(5 * 32 + 7)
    y = anonymize_sequence(engine, x)
    with torch.inference_mode():
        whole = engine.source.module(torch.from_numpy(x[None])).numpy()[0]
    np.testing.assert_allclose(y, whole, atol=1e-4)


@pytest.mark.parametrize("method", ["tmr", "pmr"])
def test_learned_model_output_is_continuous_at_joins(method):
    model = tiny(method)
    engine = create_engine("onnxruntime", model=model, window=None, max_batch=8)
    T = engine.window
    L = 5 * T + 7
    y = anonymize_sequence(engine, motion(L))
    j, seams = jumps(y), join_frames(window_starts(L, T, T // 2), T, L)
    others = np.setdiff1d(np.arange(L - 1), seams)
    assert j[seams].max() <= 1.5 * j[others].max()
    np.testing.assert_allclose(skeleton.bone_lengths(y)[:, 1:],
                               np.broadcast_to(DUMMY[1:], (L, 24)), atol=1e-4)


def test_short_and_mixed_lengths_batched_together():
    engine = create_engine("onnxruntime", model=tiny("naive"), window=32, max_batch=3)
    seqs = [motion(n, seed=n) for n in (5, 32, 33, 90)]
    out = anonymize_sequences(engine, seqs, chunk_windows=4)
    assert [len(o) for o in out] == [5, 32, 33, 90]
    alone = [anonymize_sequence(engine, s) for s in seqs]
    for a, b in zip(out, alone, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="hop"):
        anonymize_sequences(engine, seqs, hop=32)
    with pytest.raises(ValueError, match="sequence 1"):
        anonymize_sequences(engine, [seqs[0], seqs[1][:, :24]])


def test_anonymize_cli_on_npy(tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "tmr.safetensors", tiny("tmr"))
    x = np.stack([motion(70, seed=s) for s in range(3)])
    src, dst = tmp_path / "in.npy", tmp_path / "out.npy"
    np.save(src, x.astype(np.float64))
    code = cli.main(["anonymize", "--input", str(src), "--output", str(dst), "--model",
                     str(ckpt), "--engine", "onnxruntime", "--batch", "4", "--no-progress",
                     "--allow-unevaluated"])
    assert code == 0 and "frames/s" in capsys.readouterr().out
    y = np.load(dst)
    assert y.shape == x.shape and y.dtype == np.float32 and np.isfinite(y).all()
    np.testing.assert_allclose(skeleton.bone_lengths(y)[..., 1:],
                               np.broadcast_to(DUMMY[1:], (3, 70, 24)), atol=1e-4)
    engine = create_engine("torch", model=ckpt, window=None, max_batch=4)
    np.testing.assert_allclose(y, np.stack(anonymize_sequences(engine, list(x))), atol=1e-4)

    bad = x.copy()
    bad[1, 10, 3, 0] = np.nan
    np.save(src, bad)
    assert cli.main(["anonymize", "--input", str(src), "--output", str(dst), "--model",
                     str(ckpt), "--no-progress", "--allow-unevaluated"]) == 2
    assert "in.npy[1]" in capsys.readouterr().err


def test_anonymize_cli_on_real_ntu(tmp_path, capsys):
    files = sorted(NTU.glob("*.skeleton"))
    if not files:
        pytest.skip(f"no NTU samples in {NTU}")
    ckpt = save_checkpoint(tmp_path / "tmr.safetensors", tiny("tmr"))
    common = ["--model", str(ckpt), "--engine", "onnxruntime", "--window", "32",
              "--no-progress", "--allow-unevaluated"]
    one = tmp_path / "one.npy"
    assert cli.main(["anonymize", "--input", str(files[0]), "--output", str(one), *common]) == 0
    source = load_sequences(files[0]).sequences[0]
    y = np.load(one)
    assert y.shape == (1, *source.shape)
    np.testing.assert_allclose(skeleton.bone_lengths(y[0])[:, 1:],
                               np.broadcast_to(DUMMY[1:], (len(source), 24)), atol=1e-4)
    both = tmp_path / "all.npz"
    assert cli.main(["anonymize", "--input", str(NTU), "--output", str(both), *common]) == 0
    with np.load(both) as z:
        assert sorted(z.files) == [f.stem for f in files]
        np.testing.assert_allclose(z[files[0].stem], y[0], atol=1e-6)
    assert cli.main(["anonymize", "--input", str(NTU), "--output", str(tmp_path / "x.npy"),
                     *common]) == 2
    assert ".npz" in capsys.readouterr().err


def test_anonymize_cli_model_checks_and_missing_output_folder(tmp_path, capsys):
    """The model-file checks of `run` hold for `anonymize` (one guarded open_engine), and an
    output into a missing folder is an error, not a silently created tree."""
    src = tmp_path / "in.npy"
    np.save(src, motion(40)[None])
    pickled = tmp_path / "m.safetensors"
    pickled.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    naive = save_checkpoint(tmp_path / "naive.safetensors", tiny("naive"))
    cases = [(["--model", str(pickled)], "pickle"),
             (["--model", str(naive)], "privacy card"),
             (["--model", str(naive), "--allow-unevaluated"], "leak guard")]
    for extra, needle in cases:
        assert cli.main(["anonymize", "--input", str(src), "--output",
                         str(tmp_path / "o.npy"), "--no-progress", *extra]) == 2
        assert needle in capsys.readouterr().err
    missing = tmp_path / "no" / "such" / "x.npy"
    assert cli.main(["anonymize", "--input", str(src), "--output", str(missing),
                     "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err and not missing.parent.exists()


def test_degenerate_window_gets_a_reported_substitute_never_nan():
    """A window whose output is non-finite (the model divides by a collapsed body's zero
    bones) is replaced by its neighbour and reported; a sequence with no good window is an
    error naming it."""
    engine = create_engine("onnxruntime", model=tiny("tmr"), window=32, max_batch=4)
    seq = motion(100)
    collapsed = seq.copy()
    collapsed[:] = seq[:, :1]  # every joint at the root: zero-length bones, finite input
    raw = engine.run(np.ascontiguousarray(collapsed[None, :32]))
    if np.isfinite(raw).all():
        pytest.skip("this model maps a collapsed body to finite output")
    mixed = seq.copy()
    mixed[:40] = collapsed[:40]
    subs: list[str] = []
    out = anonymize_sequences(engine, [mixed], substituted=subs)[0]
    assert np.isfinite(out).all() and subs and all("sequence 0 window" in s for s in subs)
    with pytest.raises(ValueError, match="sequence 0: every window"):
        anonymize_sequences(engine, [collapsed])


def test_publish_sequence_is_what_the_node_publishes():
    """`anonymize --streamed` (and the evaluation) run the node's own path: for a streaming
    model the output equals frame-by-frame Node.step, whether sequences share the call or
    not, and is finite with the dummy's bones."""
    from streamtmr.offline import publish_sequence, publish_sequences
    from streamtmr.stream.frame import Body, Frame
    from streamtmr.stream.node import Node, NodeConfig

    engine = create_engine("onnxruntime", model=tiny("tmr-stream"), window=None)
    assert engine.streaming
    a, b = motion(50, seed=1), motion(35, scale=1.1, seed=2)
    node = Node(engine, config=NodeConfig(budget_ms=1e6, hold_ms=1e6))
    st = np.full(25, 2, np.uint8)
    live = np.stack([node.step(Frame(t, int(t * 1e9 / 30), [Body(7, a[t], st)], "s"))[0]
                     .bodies[0].joints for t in range(len(a))])
    node.close()
    alone = publish_sequence(engine, a)
    together = publish_sequences(engine, [a, b])
    np.testing.assert_allclose(alone, live, atol=1e-6)
    np.testing.assert_allclose(together[0], live, atol=1e-5)
    assert together[1].shape == b.shape and np.isfinite(together[1]).all()
    np.testing.assert_allclose(skeleton.bone_lengths(together[1])[:, 1:],
                               np.broadcast_to(DUMMY[1:], (35, 24)), atol=1e-4)


def test_published_output_after_refusals_is_the_nodes():
    """A body whose output is refused (here: NaN at the 10th frame of every fresh track) gets
    its held frame and a fresh state, in the node and on the offline path alike, with the
    engine's parallel form (torch) and with stepping (ONNX Runtime)."""
    from engines.base import Engine
    from streamtmr.offline import publish_sequences, publish_via_node

    model = tiny("tmr-stream")
    seqs = [motion(60, seed=3), motion(41, scale=1.05, seed=4), motion(9, seed=5)]
    for backend in ("torch", "onnxruntime"):
        engine = create_engine(backend, model=model, window=None)
        healthy = publish_sequences(engine, seqs)
        inner = engine._step

        def flaky(frames, state, inner=inner):
            y, new = inner(frames, state)
            y = y.copy()
            y[state["t"][:, 0] == 9] = np.nan  # the 10th frame since the state was fresh
            return y, new

        engine._step = flaky
        if backend == "torch":  # its run_tracks is the parallel form: make it step instead
            engine._run_tracks = lambda x, e=engine: Engine._run_tracks(e, x)
        node = publish_via_node(engine, seqs)
        offline = publish_sequences(engine, seqs)
        for a, b in zip(node, offline, strict=True):
            np.testing.assert_allclose(b, a, atol=1e-5)
        first = offline[0]
        np.testing.assert_array_equal(first[9], first[8])  # refused: the held frame
        np.testing.assert_array_equal(first[19], first[18])  # fresh state: 10th frame again
        assert np.abs(first[12] - healthy[0][12]).max() > 1e-3  # restarted, not continued
        np.testing.assert_allclose(first[:9], healthy[0][:9], atol=1e-5)
        np.testing.assert_allclose(offline[2], healthy[2], atol=1e-5)  # 9 frames: untouched


def test_run_tracks_is_stepping_for_every_back_end():
    """``run_tracks``: the parallel form (torch) equals ONNX Runtime stepping the same tracks
    longer than the ring; bad input is named."""
    from engines.base import EngineError

    model = tiny("tmr-stream")
    x = np.stack([motion(40, seed=6), motion(40, scale=1.1, seed=7)])
    parallel = create_engine("torch", model=model, window=None).run_tracks(x)
    ort = create_engine("onnxruntime", model=model, window=None)
    np.testing.assert_allclose(parallel, ort.run_tracks(x), atol=1e-5)
    with pytest.raises(ValueError, match=r"tracks: expected float32 \[B >= 1, L >= 1"):
        ort.run_tracks(x[0])
    with pytest.raises(ValueError, match="non-finite"):
        ort.run_tracks(np.full_like(x, np.nan))
    with pytest.raises(EngineError, match="windowed model"):
        create_engine("onnxruntime", model=tiny("tmr"), window=None).run_tracks(x)


def test_anonymize_cli_streamed_matches_publish_sequence(tmp_path, capsys):
    from streamtmr.offline import publish_sequences

    ckpt = save_checkpoint(tmp_path / "s.safetensors", tiny("tmr-stream"))
    x = np.stack([motion(40, seed=s) for s in range(2)])
    src, dst = tmp_path / "in.npy", tmp_path / "out.npy"
    np.save(src, x)
    assert cli.main(["anonymize", "--input", str(src), "--output", str(dst), "--model",
                     str(ckpt), "--engine", "onnxruntime", "--no-progress",
                     "--allow-unevaluated"]) == 0  # streaming model: streamed by default
    engine = create_engine("onnxruntime", model=ckpt, window=None)
    np.testing.assert_allclose(np.load(dst), np.stack(publish_sequences(engine, list(x))),
                               atol=1e-5)
