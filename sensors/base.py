"""The one interface every frame source implements (``--source`` is parsed in :mod:`sensors.open`).

A :class:`Source` is an iterable of :class:`~streamtmr.stream.frame.Frame`. A live source may
also yield ``None`` when no frame arrived for a while (an idle tick), so that the consumer can
check for shutdown and keep its clocks running without blocking forever. Sources count what
they had to drop in :attr:`Source.dropped` (by reason) and, when they decode wire messages,
report the time of the last decode in :attr:`Source.last_decode_ns`.
"""

from __future__ import annotations

import abc
import time
from collections import Counter
from collections.abc import Iterator

from streamtmr.stream.frame import Frame


class SourceError(ValueError):
    """A source cannot be opened: bad specification, missing file, missing package or device.
    The message names the source and the alternatives."""


class Source(abc.ABC):
    """Base class: subclasses set ``name`` and implement :meth:`frames`."""

    name: str = "source"

    def __init__(self) -> None:
        self.dropped: Counter[str] = Counter()
        self.last_decode_ns: int | None = None
        self.closed = False

    @abc.abstractmethod
    def frames(self) -> Iterator[Frame | None]:
        """Yield frames (or ``None`` idle ticks) until the source ends or is closed."""

    def __iter__(self) -> Iterator[Frame | None]:
        for item in self.frames():
            if self.closed:
                return
            yield item

    def close(self) -> None:
        """Stop producing frames and release devices and sockets (idempotent)."""
        self.closed = True

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Pacer:
    """Sleeps so that successive frames leave at ``fps × speed`` (no sleep when ``fast``)."""

    def __init__(self, fps: float = 30.0, speed: float = 1.0, realtime: bool = True):
        if fps <= 0 or speed <= 0:
            raise SourceError(f"fps ({fps}) and speed ({speed}) must be > 0")
        self.period_ns = int(1e9 / (fps * speed))
        self.realtime = realtime
        self._next: int | None = None

    def wait(self) -> None:
        if not self.realtime:
            return
        now = time.monotonic_ns()
        if self._next is None or now - self._next > 10 * self.period_ns:  # fell far behind
            self._next = now
        elif self._next > now:
            time.sleep((self._next - now) / 1e9)
        self._next += self.period_ns
