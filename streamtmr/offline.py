"""Offline anonymization of whole recordings through the same engines as the live stream.

Streaming models: what the node publishes
-----------------------------------------
For a streaming model every file writer (``streamtmr anonymize``, the BVH export, the
evaluation) writes what :class:`~streamtmr.stream.node.Node` would publish for each recording
played as one body's track (:func:`publish_sequences`): the model's output on the whole track
(``Engine.run_tracks``: the PyTorch parallel form, every frame computed once, on length buckets
of up to 256 tracks; stepping on the other back ends), the node's gate on every frame
(:func:`streamtmr.stream.gate.check_tracks`), a fresh state after each refused frame as the node
resets its slot, then the node's smoother and held frames. It equals ``Node.step`` frame by frame
to float rounding (5e-7 m on the NTU samples; ``tests/test_anonymize.py`` also with refusals).
Windowed models go through a :class:`~streamtmr.stream.node.Node` (:func:`publish_via_node`)
when ``--streamed``, else through the windows below.

Windowing and stitching policy (windowed models)
------------------------------------------------
A sequence ``[L, 25, 3]`` is cut into windows of the engine's ``T`` frames starting every
``hop`` frames (default ``T // 2``; the last window is aligned to the sequence's end, see
:func:`streamtmr.data.windows.window_starts`); a sequence shorter than ``T`` is padded by
repeating its last frame (:func:`streamtmr.data.windows.pad_to`) and cropped back afterwards.
Windows of many sequences are batched together into engine calls.

The anonymized windows are stitched in order. Each window's output is first translated so
that its root agrees on average with the already stitched frames it overlaps (models place
the root relative to the window's first frame, so consecutive windows may disagree by a
constant offset), then cross-faded over the overlap with weights rising linearly from the old
output to the new one. A blend of two poses with the dummy's bone lengths has slightly shorter
bones, so the stitched sequence is finally projected onto the dummy's bone lengths
(:func:`streamtmr.skeleton.set_bone_lengths`): every output frame has the dummy's body.

Files
-----
Input: an NTU RGB+D ``.skeleton`` file, a folder of them (actor 1 of each after
:func:`streamtmr.data.denoise.denoise`; frames where actor 1 is missing are dropped), a ``.npy``
array ``[N, T, 25, 3]`` or ``[T, 25, 3]`` (metres) or a ``.npz`` with one ``[T, 25, 3]``
array per key. Output: ``.npy`` holds every sequence stacked ``[N, T, 25, 3]`` (a 3-D input
gives a 3-D output) and needs equal lengths; ``.npz`` holds one array per input (keyed by the
NTU file name, the input's key, or ``seq00000``, ...), for sequences of different lengths.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from streamtmr import skeleton
from streamtmr.data.windows import window_starts, windows_at

SEQUENCE_SUFFIXES = (".npy", ".npz", ".skeleton")


def default_hop(window: int) -> int:
    return max(window // 2, 1)


def stitch(outputs: np.ndarray, starts: np.ndarray, length: int,
           dummy_lengths: np.ndarray) -> np.ndarray:
    """Join anonymized windows ``[W, T, 25, 3]`` starting at ``starts`` into ``[length, 25, 3]``.

    Root-aligned linear cross-fade over each overlap, then projection onto ``dummy_lengths``
    (see the module docstring). Consecutive windows must overlap (or ``T == 1``).
    """
    W, T = outputs.shape[:2]
    if len(starts) != W or W == 0:
        raise ValueError(f"stitch: {W} windows but {len(starts)} starts")
    out = np.empty((max(int(length), T), skeleton.NUM_JOINTS, 3), np.float32)
    out[:T] = outputs[0]
    end = T
    for y, s in zip(outputs[1:], starts[1:], strict=True):
        s = int(s)
        overlap = end - s
        if overlap < 1 and T > 1:
            raise ValueError(f"stitch: window at frame {s} does not overlap the previous one")
        if overlap > 0:
            shift = (out[s:end, skeleton.ROOT] - y[:overlap, skeleton.ROOT]).mean(axis=0)
            y = y + shift
            w = (np.arange(1, overlap + 1, dtype=np.float32) / (overlap + 1))[:, None, None]
            out[s:end] = (1 - w) * out[s:end] + w * y[:overlap]
        out[end:s + T] = y[overlap:]
        end = s + T
    return skeleton.set_bone_lengths(out[:length], np.asarray(dummy_lengths, np.float32))


def _check_sequence(seq: np.ndarray, where: str) -> np.ndarray:
    seq = np.asarray(seq)
    if seq.ndim != 3 or seq.shape[1:] != (skeleton.NUM_JOINTS, 3) or seq.shape[0] < 1:
        raise ValueError(f"{where}: expected a sequence [frames, 25, 3], got {list(seq.shape)}")
    if not np.issubdtype(seq.dtype, np.floating):
        raise ValueError(f"{where}: expected floating-point joints, got {seq.dtype}")
    seq = seq.astype(np.float32, copy=False)
    if not np.isfinite(seq).all():
        frame = int(np.argwhere(~np.isfinite(seq))[0][0])
        raise ValueError(f"{where}: non-finite joint coordinates in frame {frame}")
    return seq


def checked_windows(outputs: np.ndarray, starts: np.ndarray, where: str,
                    substituted: list[str] | None = None) -> np.ndarray:
    """Check each anonymized window like the node checks each body: finite and within the wire
    format's range. A bad window is replaced by the nearest good window of the same sequence
    (reported in ``substituted`` as ``"WHERE window at frame S"``); a sequence without any good
    window is an error naming it. Never lets a NaN through to the stitched output."""
    from streamtmr.stream.wire import MAX_ABS_COORD

    flat = outputs.reshape(len(outputs), -1)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(flat).all(axis=1) & (np.abs(flat).max(axis=1, initial=0) <= MAX_ABS_COORD)
    if ok.all():
        return outputs
    good = np.flatnonzero(ok)
    if not len(good):
        raise ValueError(f"{where}: every window gave non-finite or out-of-range output "
                         "(degenerate input, e.g. collapsed tracking?)")
    outputs = outputs.copy()
    for w in np.flatnonzero(~ok):
        outputs[w] = outputs[good[np.argmin(np.abs(good - w))]]
        if substituted is not None:
            substituted.append(f"{where} window at frame {int(starts[w])}")
    return outputs


def anonymize_sequences(engine, sequences: Sequence[np.ndarray], hop: int | None = None,
                        chunk_windows: int | None = None, progress: bool = False,
                        substituted: list[str] | None = None) -> list[np.ndarray]:
    """Anonymize sequences ``[L_i, 25, 3]`` (any lengths) → the same shapes, float32.

    ``engine`` is an :class:`engines.Engine`; windows of several sequences share engine calls
    in chunks of ``chunk_windows`` (default ``16 × max_batch``). Every window's output is
    checked (:func:`checked_windows`); substitutes are listed in ``substituted``.
    """
    T = engine.window
    hop = default_hop(T) if hop is None else int(hop)
    if not 1 <= hop <= max(T - 1, 1):
        raise ValueError(f"hop must be in [1, {max(T - 1, 1)}] for window {T}, got {hop}")
    seqs = [_check_sequence(s, f"sequence {i}") for i, s in enumerate(sequences)]
    plans = [window_starts(len(s), T, hop) for s in seqs]
    chunk = int(chunk_windows or 16 * engine.max_batch)
    results: list[np.ndarray | None] = [None] * len(seqs)
    total = sum(len(s) for s in seqs)

    bar = None
    if progress:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )
        bar = Progress(TextColumn("anonymizing"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("frames"), TimeRemainingColumn())
        task = bar.add_task("anonymize", total=total)
        bar.start()
    try:
        group: list[int] = []
        n_windows = 0
        for i in range(len(seqs) + 1):
            if i < len(seqs):
                group.append(i)
                n_windows += len(plans[i])
            if group and (n_windows >= chunk or i == len(seqs)):
                windows = np.concatenate([windows_at(seqs[j], plans[j], T) for j in group])
                outputs = engine.run(windows)
                k = 0
                for j in group:
                    w = len(plans[j])
                    out = checked_windows(outputs[k:k + w], plans[j], f"sequence {j}",
                                          substituted)
                    results[j] = stitch(out, plans[j], len(seqs[j]), engine.dummy_lengths)
                    if not np.isfinite(results[j]).all():
                        raise ValueError(f"sequence {j}: non-finite output after stitching")
                    k += w
                    if bar is not None:
                        bar.advance(task, len(seqs[j]))
                group, n_windows = [], 0
    finally:
        if bar is not None:
            bar.stop()
    return [r for r in results if r is not None]


def anonymize_sequence(engine, seq: np.ndarray, hop: int | None = None) -> np.ndarray:
    """One sequence ``[L, 25, 3]`` → ``[L, 25, 3]`` (see :func:`anonymize_sequences`)."""
    return anonymize_sequences(engine, [seq], hop=hop)[0]


# ------------------------------------------------------------------------------------------
# The node's path: what `streamtmr run` would publish
# ------------------------------------------------------------------------------------------

#: Frame rate at which recorded sequences are fed to the node's path.
FPS = 30.0


#: Tracks and padded frames stepped side by side on the offline path of a streaming model.
TRACKS_PER_CALL = 256
FRAMES_PER_CALL = 1 << 18


def publish_sequences(engine, sequences: Sequence[np.ndarray], config=None, fps: float = FPS,
                      substituted: list[str] | None = None) -> list[np.ndarray]:
    """What the streaming node (:class:`~streamtmr.stream.node.Node`) would publish for each of
    the sequences ``[L_i, 25, 3]``, each one body's track played at ``fps`` with no deadline:
    ``float32 [L_i, 25, 3]``.

    A streaming model runs the node's stages on whole tracks (:func:`publish_tracks`: the
    engine's ``run_tracks``, then per frame the node's :class:`~streamtmr.stream.gate.OutputGate`,
    state restarts after a refusal, its smoother and the held frame); a windowed model goes
    through a :class:`~streamtmr.stream.node.Node` itself (:func:`publish_via_node`). Both equal
    the node's output (``tests/test_published.py``). A frame in which the node published
    nothing for a body (an output refused with no held frame) takes the nearest published
    frame of that body, listed in ``substituted``; a sequence of which nothing was published is
    an error naming it.
    """
    seqs = [_check_sequence(s, f"sequence {i}") for i, s in enumerate(sequences)]
    cfg = _offline_config(config)
    if not getattr(engine, "streaming", False):
        return publish_via_node(engine, seqs, cfg, fps, substituted)
    results: list[np.ndarray] = [np.empty(0)] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))  # little padding per call
    start = 0
    while start < len(order):
        longest = len(seqs[order[start]])
        n = max(1, min(TRACKS_PER_CALL, FRAMES_PER_CALL // longest, len(order) - start))
        group = order[start:start + n]
        for i, out in zip(group, publish_tracks(engine, [seqs[i] for i in group], cfg, fps),
                          strict=True):
            results[i] = _fill(out, f"sequence {i}", substituted)
        start += n
    return results


def _offline_config(config):
    """The node's settings for recorded input: no deadline, nothing too old to hold."""
    from streamtmr.stream.node import NodeConfig
    base = config or NodeConfig()
    return replace(base, budget_ms=1e9, hang_ms=1e9, hold_ms=1e9, stats_json=None,
                   stats_interval_s=1e9).validate()


def publish_tracks(engine, tracks: list[np.ndarray], config, fps: float = FPS) -> list[np.ndarray]:
    """The streaming node's stages on whole tracks (one body each, fresh at frame 0):
    ``[L_i, 25, 3]`` → what the node publishes, NaN where it publishes nothing.

    The same stages as :meth:`Node.step <streamtmr.stream.node.Node.step>` for a streaming
    engine, each over all frames of all tracks at once where it can be: the model's output
    (``engine.run_tracks``: every frame computed once, the same function as stepping); the
    node's gate (:func:`~streamtmr.stream.gate.check_tracks`: bounds, bone lengths, leak guard);
    a refused body's state restarts at its next frame, as the node resets its state slot (the
    rest of that track is run again from there and checked again); then, frame by frame, the
    node's :class:`~streamtmr.stream.smoothing.Smoother` on the accepted frames, and the held
    (last published) frame for a body without a fresh one."""
    from streamtmr.stream.gate import check_tracks, in_range
    from streamtmr.stream.smoothing import Smoother

    n = len(tracks)
    lengths = np.array([len(s) for s in tracks])
    x = np.empty((n, int(lengths.max()), skeleton.NUM_JOINTS, 3), np.float32)
    for i, s in enumerate(tracks):  # causal: padding after a track's end changes nothing in it
        x[i, :len(s)], x[i, len(s):] = s, s[-1]
    y = _run_bucketed(engine, x, lengths)
    dummy = np.asarray(engine.dummy_lengths, np.float32)
    final = np.zeros(n, np.int64)  # frames before this are past their last restart
    while True:
        ok = check_tracks(y, x, lengths, dummy, config.bone_tol, config.leak_guard,
                          config.leak_margin_deg)
        restarts: dict[int, list[int]] = {}  # frame → tracks refused there (earliest each)
        for i in range(n):
            bad = np.flatnonzero(~ok[i, final[i]:lengths[i] - 1])
            if len(bad):
                restarts.setdefault(int(final[i] + bad[0]), []).append(i)
        if not restarts:
            break
        for t, rows in restarts.items():  # the node resets their state: fresh from t + 1
            y[rows, t + 1:] = engine.run_tracks(np.ascontiguousarray(x[rows, t + 1:]))
            final[rows] = t + 1
    smoother = Smoother(dummy, n, config.smoothing)
    out = np.full_like(x, np.nan)
    held = np.full((n, skeleton.NUM_JOINTS, 3), np.nan, np.float32)
    buf = np.empty((n, skeleton.NUM_JOINTS, 3), np.float32)
    ones = [1] * n  # one track per body: the window generation never changes
    for t in range(x.shape[1]):
        good = np.flatnonzero(ok[:, t])
        if len(good):
            t_s = int(t * 1e9 / fps) / 1e9  # the node's clock: frame times in whole ns
            smoothed = smoother.apply(list(good), ones[:len(good)], y[good, t], t_s, buf)
            fine = in_range(smoothed)
            held[good[fine]] = smoothed[fine]
        live = lengths > t
        out[live, t] = held[live]
    return [out[i, :lengths[i]] for i in range(n)]


#: A model call on tracks of similar lengths pads them to the longest: a bucket holds tracks
#: of at least this fraction of its longest one (so at most ~1/0.85 of the frames computed).
BUCKET_RATIO = 0.85


def _run_bucketed(engine, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``engine.run_tracks`` on ``x [B, L, 25, 3]`` in buckets of tracks of similar length, each
    padded only to its own longest track (frames past a track's end are left zero)."""
    y = np.zeros_like(x)
    order = np.argsort(-lengths, kind="stable")
    start = 0
    while start < len(order):
        longest = int(lengths[order[start]])
        stop = start + 1
        while stop < len(order) and lengths[order[stop]] >= BUCKET_RATIO * longest:
            stop += 1
        rows = np.sort(order[start:stop])
        y[rows, :longest] = engine.run_tracks(np.ascontiguousarray(x[rows, :longest]))
        start = stop
    return y


def publish_via_node(engine, sequences: Sequence[np.ndarray], config=None, fps: float = FPS,
                     substituted: list[str] | None = None) -> list[np.ndarray]:
    """Sequences through a :class:`~streamtmr.stream.node.Node` itself, frame by frame, as bodies
    of the same frames (up to 64 per node, which changes nothing for any of them: every stage
    is per body). The path of windowed models, and the reference the streaming path is tested
    against."""
    from streamtmr.stream.frame import TRACKED, Body, Frame
    from streamtmr.stream.node import Node

    seqs = [_check_sequence(s, f"sequence {i}") for i, s in enumerate(sequences)]
    per_node = min(64, max(1, len(seqs)))
    cfg = replace(_offline_config(config), max_bodies=per_node)
    state = np.full(skeleton.NUM_JOINTS, TRACKED, np.uint8)
    results: list[np.ndarray] = []
    for g in range(0, len(seqs), per_node):
        group = seqs[g:g + per_node]
        out = [np.full_like(s, np.nan) for s in group]
        node = Node(engine, config=cfg)
        try:
            for t in range(max(len(s) for s in group)):
                bodies = [Body(i, s[t], state) for i, s in enumerate(group) if t < len(s)]
                for frame in node.step(Frame(t, int(t * 1e9 / fps), bodies, "offline")):
                    for b in frame.bodies:
                        out[b.id][frame.seq] = b.joints
        finally:
            node.close()
        results += [_fill(o, f"sequence {g + i}", substituted) for i, o in enumerate(out)]
    return results


def _fill(seq: np.ndarray, where: str, substituted: list[str] | None) -> np.ndarray:
    """Frames left NaN (nothing published) take the nearest published frame."""
    done = np.isfinite(seq).all(axis=(1, 2))
    if done.all():
        return seq
    have = np.flatnonzero(done)
    if not len(have):
        raise ValueError(f"{where}: the node published no frame of it (every output refused)")
    missing = np.flatnonzero(~done)
    nearest = have[np.clip(np.searchsorted(have, missing), 0, len(have) - 1)]
    seq[missing] = seq[nearest]
    if substituted is not None:
        substituted.append(f"{where}: {len(missing)} frame(s) without published output")
    return seq


def publish_sequence(engine, seq: np.ndarray, config=None) -> np.ndarray:
    """One sequence through the node's path (see :func:`publish_sequences`)."""
    return publish_sequences(engine, [seq], config)[0]


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------

@dataclass
class Loaded:
    """Sequences read from an input path, with what is needed to save them the same way."""

    names: list[str]
    sequences: list[np.ndarray]
    stacked: int | None = None   # 4 or 3 when read from a .npy of that many dimensions


def _ntu_actor1(path: Path) -> np.ndarray:
    from streamtmr.data.denoise import denoise
    from streamtmr.data.ntu import read_skeleton
    joints, _ = denoise(read_skeleton(path), max_actors=1)
    return joints[:, 0]


def load_sequences(path: str | Path) -> Loaded:
    """Read the sequences of an input path (see the module docstring for the formats)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.skeleton"))
        if not files:
            raise ValueError(f"{path}: folder holds no .skeleton files")
        return Loaded([f.stem for f in files], [_ntu_actor1(f) for f in files])
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix == ".skeleton":
        return Loaded([path.stem], [_ntu_actor1(path)])
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable .npy array ({e})") from None
        if arr.ndim == 3:
            seqs = [_check_sequence(arr, str(path))]
        elif arr.ndim == 4:
            seqs = [_check_sequence(a, f"{path}[{i}]") for i, a in enumerate(arr)]
        else:
            raise ValueError(f"{path}: expected an array [N, T, 25, 3] or [T, 25, 3], got "
                             f"{list(arr.shape)}")
        if not seqs:
            raise ValueError(f"{path}: holds no sequences (N = 0)")
        return Loaded([f"seq{i:05d}" for i in range(len(seqs))], seqs, stacked=arr.ndim)
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                names = list(z.files)
                seqs = [_check_sequence(z[k], f"{path}[{k}]") for k in names]
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None
        if not seqs:
            raise ValueError(f"{path}: holds no arrays")
        return Loaded(names, seqs)
    raise ValueError(f"{path}: unsupported input (expected a folder or one of "
                     f"{', '.join(SEQUENCE_SUFFIXES)})")


def save_sequences(path: str | Path, loaded: Loaded, sequences: list[np.ndarray]) -> Path:
    """Write anonymized ``sequences`` (in ``loaded``'s order) as ``.npy`` or ``.npz``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: folder {path.parent} does not exist")
    if suffix == ".npz":
        np.savez(path, **dict(zip(loaded.names, sequences, strict=True)))
        return path
    if suffix != ".npy":
        raise ValueError(f"{path}: output must be a .npy or .npz file")
    lengths = sorted({len(s) for s in sequences})
    if len(lengths) > 1:
        raise ValueError(f"{path}: the sequences have different lengths ({lengths[0]} to "
                         f"{lengths[-1]} frames); write an .npz output (one array per input)")
    arr = sequences[0] if loaded.stacked == 3 else np.stack(sequences)
    np.save(path, arr.astype(np.float32, copy=False))
    return path


@dataclass
class Report:
    sequences: int
    frames: int
    seconds: float
    output: Path
    substituted: list[str] = field(default_factory=list)  # windows replaced (bad output)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")


def anonymize_loaded(engine, sequences: list[np.ndarray], hop: int | None = None,
                     progress: bool = False, streamed: bool | None = None
                     ) -> tuple[list[np.ndarray], list[str], float]:
    """Anonymize loaded sequences the way every file writer does: ``streamed`` (default: True
    for streaming models) is exactly what the node would publish (:func:`publish_sequences`),
    otherwise overlapping windows are stitched. Returns (outputs, substitutions, seconds)."""
    t0 = time.perf_counter()
    substituted: list[str] = []
    if streamed is None:
        streamed = bool(getattr(engine, "streaming", False))
    if streamed:
        result = publish_sequences(engine, sequences, substituted=substituted)
    else:
        result = anonymize_sequences(engine, sequences, hop=hop, progress=progress,
                                     substituted=substituted)
    return result, substituted, time.perf_counter() - t0


def anonymize_file(engine, input: str | Path, output: str | Path, hop: int | None = None,
                   progress: bool = False, streamed: bool | None = None) -> Report:
    """Read ``input``, anonymize every sequence with ``engine`` and write ``output``.

    ``streamed`` (default: True for streaming models) writes exactly what the node would
    publish (:func:`publish_sequences`); otherwise overlapping windows are stitched."""
    out = Path(output)
    if out.suffix.lower() not in (".npy", ".npz"):
        raise ValueError(f"{out}: output must be a .npy or .npz file")
    loaded = load_sequences(input)
    if out.suffix.lower() == ".npy" and len({len(s) for s in loaded.sequences}) > 1:
        raise ValueError(f"{input}: the sequences have different lengths; write an .npz "
                         f"output (one array per input) instead of {out.name}")
    result, substituted, seconds = anonymize_loaded(engine, loaded.sequences, hop, progress,
                                                    streamed)
    named = [s.replace(f"sequence {i} ", f"{n} ", 1) for s in substituted
             for i, n in [_index_of(s, loaded.names)]]
    save_sequences(out, loaded, result)
    return Report(len(result), sum(len(s) for s in result), seconds, out, named)


def _index_of(where: str, names: list[str]) -> tuple[int, str]:
    i = int(where.split()[1])
    return i, names[i]
