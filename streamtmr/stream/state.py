"""Per-body state slots of a streaming model (``engine.streaming``; notes/STREAMING_API.md).

One slot per tracked body holds the model's state tensors (causal conv caches, recurrent state,
the key/value ring of the last W frames, the per-track reference). A slot starts fresh
(``engine.init_state``) on a body's first frame and whenever the body's window generation
changes (a gap, a loss, a restarted stream: exactly when windows restart), and after an output
of that body failed a check. The live bodies' states are gathered into one batch for one
``engine.step`` per frame and the new states are scattered back. Memory is preallocated:
``max_bodies`` slots of the shapes in ``engine.state_spec()``. A step that finishes after its
deadline still hands its states back (to slots still on the same track); the frames that came
in while it ran were overruns and are not in the state (as if the sensor had skipped them).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamtmr.skeleton import NUM_JOINTS


class StateSlots:
    """The state of every body slot of one streaming engine."""

    def __init__(self, engine: Any, max_bodies: int):
        self.engine = engine
        spec = engine.state_spec()
        self.arrays = {name: np.zeros((max_bodies, *shape), dtype)
                       for name, (shape, dtype) in spec.items()}
        fresh = engine.init_state(1)
        if set(fresh) != set(self.arrays):
            raise ValueError(f"streaming engine: init_state names {sorted(fresh)} differ from "
                             f"state_spec {sorted(self.arrays)}")
        self._fresh = {n: np.asarray(a)[0] for n, a in fresh.items()}
        self._gen = np.full(max_bodies, -1, np.int64)  # the window generation a slot holds

    def reset(self, slots: list[int]) -> None:
        """Forget the state of ``slots`` (they restart fresh on their next step)."""
        self._gen[np.asarray(slots, np.int64)] = -1

    def gather(self, slots: list[int], generations: list[int]) -> dict[str, np.ndarray]:
        """The states of ``slots`` as one batch ``{name: [B, ...]}`` (copies); a slot whose
        generation changed is started fresh first."""
        idx = np.asarray(slots, np.int64)
        stale = idx[self._gen[idx] != np.asarray(generations, np.int64)]
        for name, arr in self.arrays.items():
            arr[stale] = self._fresh[name]
        self._gen[idx] = generations
        return {name: np.ascontiguousarray(arr[idx]) for name, arr in self.arrays.items()}

    def accept(self, call: Any, result: Any) -> tuple[np.ndarray | None, BaseException | None]:
        """Validate one ``step`` result for ``call`` (its slots and generations), scatter the new
        states back to the slots still holding that generation, and return the output as
        ``[B, 1, 25, 3]`` (or the error that makes the whole call fail)."""
        n = len(call.slots)
        try:
            y, new = result
        except (TypeError, ValueError):
            return None, ValueError("step returned no (output, state) pair")
        if not isinstance(y, np.ndarray) or y.shape != (n, NUM_JOINTS, 3):
            return None, ValueError(f"step output {getattr(y, 'shape', type(y).__name__)}, "
                                    f"expected [{n}, 25, 3]")
        if not isinstance(new, dict) or set(new) != set(self.arrays):
            return None, ValueError("step returned a state with other names than state_spec")
        for name, arr in self.arrays.items():
            if np.shape(new[name]) != (n, *arr.shape[1:]):
                return None, ValueError(f"step state {name}: shape {np.shape(new[name])}, "
                                        f"expected {(n, *arr.shape[1:])}")
        idx = np.asarray(call.slots, np.int64)
        keep = self._gen[idx] == np.asarray(call.gens, np.int64)
        for name, arr in self.arrays.items():
            arr[idx[keep]] = np.asarray(new[name])[keep]
        return y[:, None], None
