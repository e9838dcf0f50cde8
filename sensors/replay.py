"""Replay of recorded skeletons as a live source.

Plays, at real-time rate (``fps × speed``) or as fast as possible, optionally looping:

* an NTU RGB+D ``.skeleton`` file, or a folder of them (sorted by name): every body with its
  own tracking id, as the sensor reported it;
* a converted store (:class:`~streamtmr.data.store.SkeletonStore` directory), sequence after
  sequence; actor ``k`` of sequence ``i`` becomes body id ``i * 16 + k`` (absent = all-zero);
* a recording of the wire stream (e.g. ``streamtmr run --record``), message after message.

Sequence numbers and timestamps are re-stamped so they keep increasing across files and loops;
a pause of ``gap_s`` between sequences makes consumers start fresh windows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sensors.base import Pacer, Source, SourceError
from streamtmr.stream import wire
from streamtmr.stream.frame import TRACKED, Body, Frame


def _ntu_frames(path: Path) -> Iterator[list[Body]]:
    from streamtmr.data.ntu import NTUFormatError, read_skeleton
    try:
        seq = read_skeleton(path)
    except (OSError, NTUFormatError) as e:
        raise SourceError(f"replay {path}: {e}") from None
    for f in range(seq.num_frames):
        yield [Body(int(seq.body_ids[k]), seq.joints[f, k], seq.state[f, k])
               for k in range(seq.num_bodies) if seq.present[f, k]]


def _store_sequences(path: Path) -> Iterator[Iterator[list[Body]]]:
    from streamtmr.data.store import SkeletonStore, StoreError
    try:
        store = SkeletonStore(path)
    except StoreError as e:
        raise SourceError(f"replay {path}: {e}") from None
    names = [n for n in store.array_names if n == "joints" or n.startswith("joints")]
    names.sort(key=lambda n: (len(n), n))
    state = np.full(25, TRACKED, np.uint8)
    state.setflags(write=False)
    for i in range(len(store)):
        seq = store[i]

        def frames(seq=seq, i=i) -> Iterator[list[Body]]:
            arrays = [np.asarray(seq.arrays[n]) for n in names]
            for f in range(len(arrays[0])):
                yield [Body(i * 16 + k, np.array(a[f], np.float32), state)
                       for k, a in enumerate(arrays)
                       if a[f].shape == (25, 3) and np.abs(a[f]).max() > 0]
        yield frames()


def _recording_frames(path: Path) -> Iterator[list[Body]]:
    try:
        for payload in wire.read_recording(path):
            try:
                yield wire.decode(payload).bodies
            except wire.WireError as e:
                raise SourceError(f"replay {path}: bad message ({e})") from None
    except ValueError as e:
        if isinstance(e, SourceError):
            raise
        raise SourceError(f"replay {path}: {e}") from None


class ReplaySource(Source):
    """Replays a ``.skeleton`` file or folder, a store directory or a wire recording."""

    def __init__(self, path: str | Path, realtime: bool = True, speed: float = 1.0,
                 loop: bool = False, fps: float | None = None, gap_s: float = 1.0):
        super().__init__()
        self.path = Path(path)
        if not self.path.exists():
            raise SourceError(f"--source replay:{path}: no such file or directory")
        if self.path.is_dir() and (self.path / "meta.json").is_file():
            self.kind = "store"
        elif self.path.is_dir():
            self.files = sorted(self.path.rglob("*.skeleton"))
            if not self.files:
                raise SourceError(f"--source replay:{path}: no .skeleton files, no store "
                                  f"(meta.json) in this folder")
            self.kind = "ntu"
        elif self.path.suffix == ".skeleton":
            self.files = [self.path]
            self.kind = "ntu"
        elif wire.is_recording(self.path):
            self.kind = "recording"
        else:
            raise SourceError(f"--source replay:{path}: not a .skeleton file, a store or a "
                              f"streamtmr recording")
        if fps is None and self.kind == "store":
            from streamtmr.data.store import SkeletonStore
            fps = float(SkeletonStore(self.path).meta.get("fps", 30))
        self.fps = float(fps or 30.0)
        self.loop = loop
        self.gap_ns = int(gap_s * 1e9)
        self.pacer = Pacer(self.fps, speed, realtime)
        self.name = f"replay({self.path.name})"

    def _sequences(self) -> Iterator[Iterator[list[Body]]]:
        if self.kind == "ntu":
            for p in self.files:
                yield _ntu_frames(p)
        elif self.kind == "store":
            yield from _store_sequences(self.path)
        else:
            yield _recording_frames(self.path)

    def frames(self) -> Iterator[Frame]:
        seq, t = 0, 0
        period = int(1e9 / self.fps)
        while True:
            for sequence in self._sequences():
                for bodies in sequence:
                    if self.closed:
                        return
                    self.pacer.wait()
                    yield Frame(seq, t, bodies, self.name)
                    seq += 1
                    t += period
                t += self.gap_ns
            if not self.loop or seq == 0:
                return
