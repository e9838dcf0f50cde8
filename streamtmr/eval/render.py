"""Skeleton animations (GIF via Pillow, MP4 via ffmpeg when installed) and sequence loading for
``streamtmr visualize`` / ``streamtmr compare``.

All panels of one animation share one camera and one set of axis limits, so an original and
its anonymized version are directly comparable. Kinect camera space is drawn with Y up.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from streamtmr import skeleton


class RenderError(ValueError):
    """A sequence cannot be read or an animation cannot be written (the message says why)."""


def load_sequence(path: str | Path, index: int = 0, body: int = 0) -> np.ndarray:
    """A ``[T, 25, 3]`` sequence from an NTU ``.skeleton`` file (one body), a store folder
    (sequence ``index``), a ``.npy`` file (``[T, 25, 3]`` or ``[N, T, 25, 3]``, item ``index``)
    or a ``.npz`` file (array number ``index``)."""
    path = Path(path)
    if path.is_dir():
        from streamtmr.data.store import SkeletonStore
        store = SkeletonStore(path)
        if not 0 <= index < len(store):
            raise RenderError(f"{path}: index {index} out of range (0..{len(store) - 1})")
        return np.array(store[index].joints, np.float32)
    if path.suffix == ".skeleton":
        from streamtmr.data.ntu import read_skeleton
        seq = read_skeleton(path)
        if not 0 <= body < seq.joints.shape[1]:
            raise RenderError(f"{path}: body {body} out of range (file has {seq.joints.shape[1]})")
        present = seq.present[:, body]
        if not present.any():
            raise RenderError(f"{path}: body {body} is never present")
        return seq.joints[present, body].astype(np.float32)
    if path.suffix in (".npy", ".npz"):
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise RenderError(f"{path}: cannot read ({e})") from None
        if path.suffix == ".npz":
            keys = list(data.keys())
            if not 0 <= index < len(keys):
                raise RenderError(f"{path}: index {index} out of range ({len(keys)} arrays)")
            arr = data[keys[index]]
        else:
            arr = data
            if arr.ndim == 4:
                if not 0 <= index < len(arr):
                    raise RenderError(f"{path}: index {index} out of range (0..{len(arr) - 1})")
                arr = arr[index]
        if arr.ndim != 3 or arr.shape[1:] != (skeleton.NUM_JOINTS, 3):
            raise RenderError(f"{path}: expected [T, 25, 3] joints, got {list(arr.shape)}")
        return np.asarray(arr, np.float32)
    raise RenderError(f"{path}: unknown input (give an NTU .skeleton, a store folder, .npy or "
                      ".npz)")


def animate(sequences: Sequence[np.ndarray], path: str | Path, titles: Sequence[str] = (),
            fps: float = 30.0, step: int = 1, elev: float = 12.0, azim: float = -70.0,
            size: float = 3.2) -> Path:
    """Write an animation of one or more ``[T, 25, 3]`` sequences side by side (same camera,
    same limits). ``step`` keeps every step-th frame. ``.gif`` uses Pillow; ``.mp4`` needs
    ffmpeg."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import animation

    path = Path(path)
    if path.suffix not in (".gif", ".mp4"):
        raise RenderError(f"{path}: output must be .gif or .mp4")
    if path.suffix == ".mp4" and shutil.which("ffmpeg") is None:
        raise RenderError("writing .mp4 needs ffmpeg on PATH (write a .gif instead)")
    seqs = [np.asarray(s, np.float32)[::step] for s in sequences]
    if not seqs or any(s.ndim != 3 or s.shape[1:] != (skeleton.NUM_JOINTS, 3) for s in seqs):
        raise RenderError("every sequence must be [T, 25, 3]")
    if any(not np.isfinite(s).all() for s in seqs):
        raise RenderError("sequences contain NaN/Inf")
    n = min(len(s) for s in seqs)
    # draw (x, z, y): Kinect Y up becomes the plot's vertical axis
    pts = [s[:n][..., [0, 2, 1]] for s in seqs]
    allp = np.concatenate([p.reshape(-1, 3) for p in pts])
    centre = (allp.max(0) + allp.min(0)) / 2
    half = max(float((allp.max(0) - allp.min(0)).max()) / 2, 0.5) * 1.05
    fig = plt.figure(figsize=(size * len(pts), size))
    fig.subplots_adjust(left=0, right=1, bottom=0, top=0.92, wspace=0)
    lines = []
    for k in range(len(pts)):
        ax = fig.add_subplot(1, len(pts), k + 1, projection="3d")
        ax.view_init(elev=elev, azim=azim)
        for i, c in enumerate("xyz"):
            getattr(ax, f"set_{c}lim")(centre[i] - half, centre[i] + half)
        ax.set_xticklabels([])
        ax.set_yticklabels([])
        ax.set_zticklabels([])
        if k < len(titles):
            ax.set_title(titles[k], fontsize=9)
        segs = [ax.plot([], [], [], "-", lw=2, color="tab:blue" if k == 0 else "tab:orange")[0]
                for _ in skeleton.BONES]
        lines.append(segs)

    def update(t: int):
        out = []
        for p, segs in zip(pts, lines):
            for (a, b), ln in zip(skeleton.BONES, segs):
                ln.set_data_3d(p[t, [a, b], 0], p[t, [a, b], 1], p[t, [a, b], 2])
                out.append(ln)
        return out

    anim = animation.FuncAnimation(fig, update, frames=n, interval=1000 * step / fps, blit=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = (animation.PillowWriter(fps=fps / step) if path.suffix == ".gif"
              else animation.FFMpegWriter(fps=fps / step))
    anim.save(str(path), writer=writer)
    plt.close(fig)
    return path


def streamed_comparison(seq: np.ndarray, model, dummy) -> tuple[np.ndarray, float, str]:
    """``seq [T, 25, 3]`` anonymized as a streaming node would (the newest frame of the window
    ending at every frame): (anonymized, mean joint displacement in mm, the method's name)."""
    from streamtmr.eval.protocol import make_anonymizer, method_from_model, streamed_newest

    m = method_from_model(model.method, model, dummy)
    anonymize = make_anonymizer(m.module, m.window)
    anon = streamed_newest(anonymize, seq, m.window or 64)
    return anon, float(np.linalg.norm(anon - seq, axis=-1).mean() * 1000), m.name
