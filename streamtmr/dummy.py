"""The dummy body every stream is retargeted onto.

A dummy is a set of 25 bone lengths (entry 0, the root, is 0) in the Kinect v2 topology of
:mod:`streamtmr.skeleton`. The package ships one default dummy (a neutral SynthKinect body chosen
without labels, see ``docs/synthkinect.md``); users may supply their own as a JSON file of bone
lengths or measure one from a recorded sequence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from streamtmr import skeleton

DEFAULT_ASSET = "dummy_default.json"


class DummyError(ValueError):
    """A dummy file or array is malformed (the message names what and where)."""


@dataclass(frozen=True)
class Dummy:
    name: str
    lengths: np.ndarray  # float32 [25], root entry 0

    def __post_init__(self) -> None:
        lengths = np.asarray(self.lengths, dtype=np.float32)
        if lengths.shape != (skeleton.NUM_JOINTS,):
            raise DummyError(f"dummy {self.name!r}: expected 25 bone lengths, got {lengths.shape}")
        if not np.isfinite(lengths).all() or (lengths[1:] <= 0).any() or (lengths > 2).any():
            raise DummyError(f"dummy {self.name!r}: bone lengths must be finite, in (0, 2] m")
        lengths = lengths.copy()
        lengths[skeleton.ROOT] = 0.0
        lengths.setflags(write=False)
        object.__setattr__(self, "lengths", lengths)

    @classmethod
    def from_sequence(cls, joints: np.ndarray, name: str = "measured") -> Dummy:
        """Median bone lengths of a recorded sequence ``[T, 25, 3]`` (or one frame)."""
        joints = np.asarray(joints, dtype=np.float32).reshape(-1, skeleton.NUM_JOINTS, 3)
        return cls(name, np.median(skeleton.bone_lengths(joints), axis=0))

    @classmethod
    def load(cls, path: str | Path) -> Dummy:
        """Read a dummy JSON file: ``{"name": str, "bone_lengths": {JointName: metres, ...}}``
        (every non-root joint named) or ``{"name": str, "lengths": [25 floats]}``."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DummyError(f"{path}: cannot read dummy ({e})") from None
        try:
            if "bone_lengths" in d:
                named = d["bone_lengths"]
                missing = [n for n in skeleton.JOINT_NAMES[1:] if n not in named]
                unknown = [n for n in named if n not in skeleton.JOINT]
                if missing or unknown:
                    raise DummyError(f"{path}: bone_lengths missing {missing}, unknown {unknown}")
                lengths = [0.0] + [float(named[n]) for n in skeleton.JOINT_NAMES[1:]]
            else:
                lengths = d["lengths"]
            return cls(str(d.get("name", path.stem)), np.asarray(lengths, dtype=np.float32))
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, DummyError):
                raise DummyError(f"{path}: {e}") from None
            raise DummyError(f"{path}: malformed dummy ({e!r})") from None

    def save(self, path: str | Path) -> None:
        named = {n: round(float(v), 6) for n, v in zip(skeleton.JOINT_NAMES[1:], self.lengths[1:])}
        Path(path).write_text(json.dumps({"name": self.name, "bone_lengths": named}, indent=1))

    def rest_pose(self) -> np.ndarray:
        """The dummy standing in a neutral pose (arms down), root at the origin, facing the
        sensor as in Kinect camera space: its left side at −X, its toes pointing to −Z."""
        dirs = np.zeros((skeleton.NUM_JOINTS, 3), np.float32)
        up, down = np.array([0, 1, 0], np.float32), np.array([0, -1, 0], np.float32)
        for j, name in enumerate(skeleton.JOINT_NAMES):
            if j == skeleton.ROOT:
                continue
            if name in ("SpineMid", "SpineShoulder", "Neck", "Head"):
                dirs[j] = up
            elif name.startswith("Shoulder") or name.startswith("Hip"):
                side = -1.0 if name.endswith("Left") else 1.0
                dirs[j] = [side, -0.2 if name.startswith("Hip") else 0.0, 0]
            elif name.startswith("Foot"):
                dirs[j] = [0, 0, -1]
            else:
                dirs[j] = down
        dirs /= np.maximum(np.linalg.norm(dirs, axis=-1, keepdims=True), 1e-8)
        return skeleton.forward_kinematics(np.zeros(3, np.float32), dirs, self.lengths)


def default_dummy() -> Dummy:
    """The dummy shipped with the package."""
    path = resources.files("streamtmr.assets").joinpath(DEFAULT_ASSET)
    with resources.as_file(path) as p:
        return Dummy.load(p)


def resolve_dummy(spec: str | Path | None) -> Dummy:
    """``None``/"default" → the shipped dummy; otherwise a path to a dummy JSON file."""
    if spec is None or str(spec) == "default":
        return default_dummy()
    return Dummy.load(spec)
