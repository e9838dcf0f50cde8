"""Frames from a Lab Streaming Layer MoCap stream: ``--source lsl://NAME``.

The stream is resolved by name (``lsl://NAME?timeout=SECONDS``, default
:data:`RESOLVE_TIMEOUT_S`); it must carry one body as 75 channels, x, y, z of the 25 Kinect v2
joints (layout and meta-data in :mod:`streamtmr.stream.lsl`: labelled channels are matched by
label and scaled by their unit, unlabelled ones taken in Kinect order and metres). Each sample
becomes one frame: body id 0, every joint TRACKED (LSL MoCap has no tracking state), ``t_ns``
the sample's LSL timestamp mapped to this machine's LSL clock (clock sync, monotonized), ``seq``
counting samples. A sample with a non-finite value yields a frame without the body (counted as
``nonfinite``). When nothing arrives for ``idle_ms`` the source yields ``None`` (an idle tick).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

from sensors.base import Source, SourceError
from streamtmr.skeleton import NUM_JOINTS
from streamtmr.stream import lsl
from streamtmr.stream.frame import Body, Frame

log = logging.getLogger(__name__)

RESOLVE_TIMEOUT_S = 10.0
BODY_ID = 0


def _seen(pylsl) -> str:
    streams = pylsl.resolve_streams(wait_time=0.5)
    return ", ".join(f"{s.name()!r} ({s.type()}, {s.channel_count()} ch)"
                     for s in streams) or "none"


class LslSource(Source):
    """One LSL MoCap inlet (see the module)."""

    name = "lsl"

    def __init__(self, stream: str, timeout_s: float = RESOLVE_TIMEOUT_S, idle_ms: int = 100,
                 max_buffered_s: int = 2):
        super().__init__()
        try:
            pylsl = lsl.import_pylsl()
        except ImportError as e:
            raise SourceError(f"--source lsl://{stream}: {e}") from None
        found = pylsl.resolve_byprop("name", stream, minimum=1, timeout=timeout_s)
        if not found:
            raise SourceError(f"--source lsl://{stream}: no LSL stream named {stream!r} within "
                              f"{timeout_s:g} s (streams seen: {_seen(pylsl)}); start the "
                              f"outlet or raise ?timeout=SECONDS")
        if len(found) > 1:
            log.warning("lsl://%s: %d streams share this name; reading the one from %s",
                        stream, len(found), found[0].hostname())
        self.inlet = pylsl.StreamInlet(
            found[0], max_buflen=max_buffered_s,
            processing_flags=pylsl.proc_clocksync | pylsl.proc_monotonize)
        try:
            self.order, self.scale = lsl.channel_layout(self.inlet.info(timeout=timeout_s))
            self.inlet.open_stream(timeout=timeout_s)  # receive from now on, not from the 1st pull
        except (ValueError, RuntimeError) as e:  # RuntimeError: pylsl.util.TimeoutError
            self.inlet.close_stream()
            raise SourceError(f"--source lsl://{stream}: {e}") from None
        self.stream = stream
        self.name = f"lsl({stream})"
        self.idle_s = idle_ms / 1000.0

    def frame(self, seq: int, sample: list[float], timestamp: float) -> Frame:
        """One LSL sample → one frame (see the module)."""
        joints = (np.asarray(sample, np.float64)[self.order] * self.scale).astype(np.float32)
        if not np.isfinite(joints).all():
            self.dropped["nonfinite"] += 1
            return Frame(seq, int(round(timestamp * 1e9)), [], self.name)
        body = Body(BODY_ID, joints.reshape(NUM_JOINTS, 3))
        return Frame(seq, int(round(timestamp * 1e9)), [body], self.name)

    def frames(self) -> Iterator[Frame | None]:
        seq = 0
        while not self.closed:
            # a lost outlet is recovered by the inlet (same source id); meanwhile: idle ticks
            sample, ts = self.inlet.pull_sample(timeout=self.idle_s)
            if sample is None:
                yield None
                continue
            yield self.frame(seq, sample, ts)
            seq += 1

    def close(self) -> None:
        if not self.closed:
            super().close()
            self.inlet.close_stream()


def open_lsl(spec: str) -> LslSource:
    """``lsl://NAME[?timeout=SECONDS]`` → :class:`LslSource`."""
    try:
        name, query = lsl.stream_name(spec, "--source")
        timeout = float(query.get("timeout", [RESOLVE_TIMEOUT_S])[-1])
    except ValueError as e:
        raise SourceError(str(e) if str(e).startswith("--source") else
                          f"--source {spec}: timeout must be a number of seconds ({e})") from None
    if timeout <= 0:
        raise SourceError(f"--source {spec}: timeout must be > 0 seconds")
    return LslSource(name, timeout)
