"""Embedding API: anonymize skeletons inside another program.

* :class:`LiveAnonymizer` — load once, then ``push(frame)`` every sensor frame on your own loop
  and get the anonymized frame back (or ``None``). No sockets, no threads besides the engine's.
* :class:`BackgroundNode` — the whole streaming node (source → engine → sinks) in a background
  thread, with :meth:`BackgroundNode.start` / :meth:`BackgroundNode.stop`.

Both are fail-closed like the streaming node (see :mod:`streamtmr.stream.node`): what they
return or publish is always engine output with the dummy's bone lengths, never input joints.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from streamtmr.stream import wire
from streamtmr.stream.frame import Frame
from streamtmr.stream.node import Node as _Node
from streamtmr.stream.node import NodeConfig
from streamtmr.stream.sinks import Sink

log = logging.getLogger(__name__)


def _engine(engine: Any, model: str | None, dummy: str | None, backend: str, window: int,
            max_batch: int, allow_unevaluated: bool = False) -> Any:
    """The given engine, or one opened through the guarded door (:func:`engines.open_engine`:
    file checks, privacy card, leak guard), as the CLI does."""
    if engine is not None:
        return engine
    from engines import open_engine
    return open_engine(backend, model=model, dummy=dummy, window=window, max_batch=max_batch,
                       allow_unevaluated=allow_unevaluated)


class LiveAnonymizer:
    """In-process anonymizer.

    >>> anon = LiveAnonymizer(model="default")             # loads and warms the engine once
    >>> out = anon.push(frame)                          # per sensor frame; Frame or None

    ``push`` returns the anonymized frame for ``frame`` — same ``seq``/``t_ns``, bodies with the
    same ids, joints retargeted onto the dummy — or ``None`` when nothing could be published in
    time (a duplicate frame, or an overrun with ``overrun="drop"``). With ``hop > 1`` only every
    hop-th push returns frames; :meth:`push_all` returns all of them.
    """

    def __init__(self, engine: Any = None, *, model: str | None = "default",
                 dummy: str | None = "default", backend: str = "auto", window: int = 64,
                 config: NodeConfig | None = None, sinks: Iterable[Sink] = (),
                 allow_unevaluated: bool = False):
        cfg = config or NodeConfig()
        self.engine = _engine(engine, model, dummy, backend, window, max(8, cfg.max_bodies),
                              allow_unevaluated)
        self.node = _Node(self.engine, sinks, cfg)

    @property
    def dummy_lengths(self):
        return self.node.lengths

    def push_all(self, frame: Frame) -> list[Frame]:
        return self.node.step(frame)

    def push(self, frame: Frame) -> Frame | None:
        out = self.node.step(frame)
        return out[-1] if out else None

    def stats(self) -> dict[str, Any]:
        return self.node.stats()

    def close(self) -> dict[str, Any]:
        return self.node.close()

    def __enter__(self) -> LiveAnonymizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BackgroundNode:
    """The streaming node in a background thread: ``source`` → engine → ``sinks``.

    ``source`` is a :class:`sensors.base.Source` (or any iterable of frames / ``None`` ticks);
    it is consumed and closed by the node's thread. ``stop()`` asks the loop to finish, waits,
    and returns the final stats.
    """

    def __init__(self, source: Iterable[Frame | None], sinks: Iterable[Sink] = (),
                 engine: Any = None, *, model: str | None = "default",
                 dummy: str | None = "default", backend: str = "auto", window: int = 64,
                 config: NodeConfig | None = None, recorder: wire.Recorder | None = None,
                 max_frames: int | None = None, duration_s: float | None = None,
                 allow_unevaluated: bool = False):
        cfg = config or NodeConfig()
        self.source = source
        self.engine = _engine(engine, model, dummy, backend, window, max(8, cfg.max_bodies),
                              allow_unevaluated)
        self.node = _Node(self.engine, sinks, cfg, recorder=recorder)
        self._limits = (max_frames, duration_s)
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.result: dict[str, Any] | None = None

    def _main(self) -> None:
        try:
            self.node.run(self.source, *self._limits)
        except BaseException as e:  # reported through .error and the log
            self.error = e
            log.exception("streaming node stopped on an error")
        finally:
            close = getattr(self.source, "close", None)
            if close is not None:
                close()
            self.result = self.node.close()

    def start(self) -> BackgroundNode:
        if self._thread is not None:
            raise RuntimeError("node already started")
        self._thread = threading.Thread(target=self._main, name="streamtmr-node", daemon=True)
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        return self.node.stats()

    def join(self, timeout_s: float | None = None) -> dict[str, Any] | None:
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self.result

    def stop(self, timeout_s: float = 5.0) -> dict[str, Any] | None:
        """Finish after the current frame, close everything, return the final stats."""
        self.node.request_stop()
        return self.join(timeout_s)

    def __enter__(self) -> BackgroundNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
