"""Per-body state slots of a streaming model (``engine.streaming``; :class:`engines.base.Engine`).

One slot per tracked body holds the model's state tensors (causal conv caches, recurrent state,
the key/value ring of the last W frames, the per-track reference). A slot starts fresh
(``engine.init_state``) on a body's first frame and whenever the body's window generation
changes (a gap, a loss, a restarted stream: exactly when windows restart), and after an output
of that body failed a check. The live bodies' states are gathered into one batch for one
``engine.step`` per frame and the new states are scattered back. Memory is preallocated:
``max_bodies`` slots of the shapes in ``engine.state_spec()``. A step that finishes after its
deadline still hands its states back (to slots still on the same track); the frames that came
in while it ran were overruns and are not in the state (as if the sensor had skipped them).

Staggering (``stagger=True``, the node's ``stagger_search``; off by default): a model with a
periodic cost (a motion matcher searches its database every few frames) names the state entry
whose fresh value is the phase of that cost (``engine.stagger = (name, period)``). A body that
starts fresh gets the phase that puts its costly frames on the residue (frame count modulo
period) fewest live bodies use, so bodies that enter together do not all search on the same
frame. The phase is centred (−2 … 2 for a period
of 5): a matcher's first search after the track's first frame comes 3 to 7 frames later instead
of 5, then every 5 frames, as evaluated. Alone, a body gets phase 0: the zero state, exactly
the schedule the evaluation measures (``bench/search_phase.py`` measures the others).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamtmr.skeleton import NUM_JOINTS


class StateSlots:
    """The state of every body slot of one streaming engine."""

    def __init__(self, engine: Any, max_bodies: int, stagger: bool = False):
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
        self.stagger = getattr(engine, "stagger", None) if stagger else None
        if self.stagger is not None:
            name, period = self.stagger
            if name not in self.arrays or self.arrays[name].shape[1:] != () or int(period) < 1:
                raise ValueError(f"streaming engine: stagger {self.stagger!r} must name a "
                                 f"scalar state entry and a period >= 1")
        self._frames = 0                               # gather calls: the node's frame count
        self._residue = np.full(max_bodies, -1, np.int64)  # each slot's costly-frame residue

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
        if self.stagger is not None and len(stale):
            self._stagger(idx, stale)
        self._frames += 1
        self._gen[idx] = generations
        return {name: np.ascontiguousarray(arr[idx]) for name, arr in self.arrays.items()}

    def _stagger(self, live: np.ndarray, stale: np.ndarray) -> None:
        """Phase each fresh slot onto the residue the fewest other live slots use (phase 0,
        the evaluated schedule, wherever it is among them)."""
        name, period = self.stagger[0], int(self.stagger[1])
        keep = live[~np.isin(live, stale)]
        used = np.bincount(self._residue[keep][self._residue[keep] >= 0] % period,
                           minlength=period)
        now = self._frames % period                    # the residue of phase 0
        for slot in stale:
            r = now if used[now] == used.min() else int(np.argmin(used))
            phase = (self._frames - r) % period        # its search frames ≡ r (mod period),
            if phase > period // 2:                    # the first one at most period // 2
                phase -= period                        # frames off the evaluated schedule
            self.arrays[name][slot] = phase
            self._residue[slot] = r
            used[r] += 1

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
