"""Bone rotations for avatar protocols (VMC, VRChat) and BVH, solved from joint positions.

Coordinates: Kinect v2 camera space is right-handed (X to the sensor's left, Y up, Z away
from the sensor); Unity is left-handed (X right, Y up, Z forward). The same physical point is
``(-x, y, z)`` in Unity: :func:`to_unity` negates X, nothing is mirrored. A person facing the
sensor therefore faces Unity's -Z and the Hips rotation says so (180° about Y); receivers that
want a mirror view turn the avatar themselves.

Rest pose: a normalized humanoid (all local rotations identity) in T-pose facing +Z, the bone
offsets being the dummy's bone lengths along the T-pose directions. Each bone's local rotation
is the swing taking its rest direction to its current direction expressed in the parent's frame
(the twist about the bone is not observable from positions and stays zero). Hips and Chest use
two directions (spine up and the hip / shoulder line) so the torso's yaw is kept.

The solver is generic (:class:`Plan`: bones, rest directions, two-direction frames): the VMC
plan (:data:`VMC`) drives Unity's humanoid bones, :mod:`streamtmr.bvh` builds a plan over every
Kinect joint from the same parts. Rotations are :class:`scipy.spatial.transform.Rotation`;
quaternions handed out are ``(x, y, z, w)`` arrays rotating column vectors (Unity's ``q * v``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.spatial.transform import Rotation

from streamtmr import skeleton
from streamtmr.skeleton import JOINT

_UP, _DOWN, _FWD = (0.0, 1.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0)
_L, _R = (-1.0, 0.0, 0.0), (1.0, 0.0, 0.0)


def _rest_directions() -> np.ndarray:
    d = np.zeros((skeleton.NUM_JOINTS, 3), np.float64)
    for j, name in enumerate(skeleton.JOINT_NAMES):
        if j == skeleton.ROOT:
            continue
        left = name.endswith("Left")
        if name in ("SpineMid", "SpineShoulder", "Neck", "Head"):
            d[j] = _UP
        elif name.startswith("Hip"):
            d[j] = (-1.0 if left else 1.0, -0.3, 0.0)
        elif name.startswith(("Knee", "Ankle")):
            d[j] = _DOWN
        elif name.startswith("Foot"):
            d[j] = _FWD
        else:  # shoulders, arms, hands, hand tips, thumbs: T-pose
            d[j] = _L if left else _R
    return d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-12)


#: T-pose bone directions in Unity axes, per Kinect child joint (entry 0 unused).
REST_DIRECTIONS = _rest_directions()

#: Unity HumanBodyBones driven: (name, Kinect joint it sits on, joint its direction points
#: to (None: keeps its parent's rotation), parent bone). Parents come first.
BONES: tuple[tuple[str, str, str | None, str | None], ...] = (
    ("Hips", "SpineBase", "SpineMid", None),
    ("Spine", "SpineMid", "SpineShoulder", "Hips"),
    ("Chest", "SpineShoulder", "Neck", "Spine"),
    ("Neck", "Neck", "Head", "Chest"),
    ("Head", "Head", None, "Neck"),
    *((f"{s}Shoulder", "SpineShoulder", f"Shoulder{s}", "Chest") for s in ("Left", "Right")),
    *((f"{s}UpperArm", f"Shoulder{s}", f"Elbow{s}", f"{s}Shoulder") for s in ("Left", "Right")),
    *((f"{s}LowerArm", f"Elbow{s}", f"Wrist{s}", f"{s}UpperArm") for s in ("Left", "Right")),
    *((f"{s}Hand", f"Wrist{s}", f"Hand{s}", f"{s}LowerArm") for s in ("Left", "Right")),
    *((f"{s}UpperLeg", f"Hip{s}", f"Knee{s}", "Hips") for s in ("Left", "Right")),
    *((f"{s}LowerLeg", f"Knee{s}", f"Ankle{s}", f"{s}UpperLeg") for s in ("Left", "Right")),
    *((f"{s}Foot", f"Ankle{s}", f"Foot{s}", f"{s}LowerLeg") for s in ("Left", "Right")),
)
BONE_NAMES = tuple(b[0] for b in BONES)
#: Kinect joints whose rotation comes from two directions: (up child, across from, across to).
#: The up child is the bone's own direction, so it is reproduced exactly.
TORSO_FRAMES: dict[str, tuple[str, str, str]] = {
    "SpineBase": ("SpineMid", "HipLeft", "HipRight"),
    "SpineShoulder": ("Neck", "ShoulderLeft", "ShoulderRight")}
_FRAMES = {"Hips": "SpineBase", "Chest": "SpineShoulder"}


def to_unity(points: np.ndarray) -> np.ndarray:
    """Kinect camera space (right-handed) → Unity (left-handed): negate X."""
    return points * np.array([-1.0, 1.0, 1.0], dtype=points.dtype)


# --------------------------------------------------------------------------------------------
# Rotation helpers (scipy), batched over leading dimensions
# --------------------------------------------------------------------------------------------

def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.cross`` over the last axis, without its per-call overhead (small arrays)."""
    a, b = np.broadcast_arrays(a, b)
    out = np.empty(a.shape)
    out[..., 0] = a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1]
    out[..., 1] = a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2]
    out[..., 2] = a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]
    return out


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.where(n > 1e-12, v / np.maximum(n, 1e-12), 0.0)


def swing(a: np.ndarray, b: np.ndarray) -> Rotation:
    """The shortest rotations taking unit directions ``a [N, 3]`` to directions ``b [N, 3]``
    (a half turn about an axis orthogonal to ``a`` when opposite; identity when ``b`` is 0)."""
    a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
    cross = _cross(a, b)
    sin = np.sqrt(np.einsum("...i,...i->...", cross, cross))  # |a × b| = |b| sin θ
    cos = np.einsum("...i,...i->...", a, b)                     # a · b = |b| cos θ
    axis = cross / np.maximum(sin, 1e-300)[..., None]
    opposite = (sin <= 1e-9 * np.abs(cos)) & (cos < 0)
    if opposite.any():  # half turn about an axis orthogonal to a
        ref = np.where(np.abs(a[..., :1]) < 0.9, [1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
        axis = np.where(opposite[..., None], _unit(_cross(a, ref)), axis)
    return Rotation.from_rotvec(axis * np.arctan2(sin, cos)[..., None])


def basis(up: np.ndarray, across: np.ndarray) -> np.ndarray:
    """Orthonormal frames ``[N, 3, 3]`` (columns x, y, z): y along ``up``, x towards ``across``."""
    y = _unit(up)
    x = across - np.einsum("...i,...i->...", across, y)[..., None] * y
    fallback = _cross(y, np.where(np.abs(y[..., 2:]) < 0.9, [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]))
    x = _unit(np.where((np.linalg.norm(x, axis=-1) < 1e-9)[..., None], fallback, x))
    return np.stack([x, y, _cross(x, y)], axis=-1)


def unity_euler(q: np.ndarray) -> np.ndarray:
    """Unity's ``Quaternion.eulerAngles`` in degrees, each in [0, 360): the rotation is
    Z first, then X, then Y (``R = Ry · Rx · Rz``). Accepts ``[..., 4]``."""
    with warnings.catch_warnings():  # gimbal lock: scipy puts everything in Y, as Unity does
        warnings.simplefilter("ignore", UserWarning)
        yxz = Rotation.from_quat(np.reshape(q, (-1, 4))).as_euler("YXZ", degrees=True)
    return np.reshape(yxz[:, [1, 0, 2]] % 360.0, np.shape(q)[:-1] + (3,))


def euler_to_quat(deg: np.ndarray) -> np.ndarray:
    """Inverse of :func:`unity_euler` (Unity's ``Quaternion.Euler``)."""
    deg = np.asarray(deg, np.float64)
    return Rotation.from_euler("YXZ", deg[..., [1, 0, 2]], degrees=True).as_quat()


# --------------------------------------------------------------------------------------------
# Pose solving
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Level:
    """The bones of one depth of a plan, as index arrays (see :func:`solve_plan`)."""

    bones: np.ndarray      # (k,) bone indices
    parents: np.ndarray    # (k,) parent bone index, len(plan.bones) for a root
    swung: np.ndarray      # positions within the level of the swing bones
    at: np.ndarray         # (s,) Kinect joint each swing bone sits on
    child: np.ndarray      # (s,) Kinect joint it points to
    frames: tuple[tuple[int, str], ...]  # (position within the level, torso joint)


@dataclass(frozen=True, eq=False)
class Plan:
    """Bones to solve: ``bones`` as :data:`BONES` (parents first), ``rest`` the rest direction
    of every Kinect joint's bone in the axes the points come in, ``frames`` the bones whose
    rotation is a two-direction torso frame (bone name → Kinect joint of :data:`TORSO_FRAMES`)."""

    bones: tuple[tuple[str, str, str | None, str | None], ...]
    rest: np.ndarray
    frames: Mapping[str, str]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(b[0] for b in self.bones)

    @cached_property
    def levels(self) -> tuple[_Level, ...]:
        """Bones grouped by depth in the tree: every parent in an earlier level."""
        index = {name: i for i, name in enumerate(self.names)}
        depth: list[int] = []
        for _, _, _, parent in self.bones:
            depth.append(0 if parent is None else depth[index[parent]] + 1)
        out = []
        for d in range(max(depth) + 1):
            level = [i for i, x in enumerate(depth) if x == d]
            rows = [self.bones[i] for i in level]
            swung = [k for k, (name, _, child, _) in enumerate(rows)
                     if child is not None and name not in self.frames]
            out.append(_Level(
                np.array(level), np.array([len(self.bones) if p is None else index[p]
                                           for *_, p in rows]),
                np.array(swung, np.int64), np.array([JOINT[rows[k][1]] for k in swung]),
                np.array([JOINT[rows[k][2]] for k in swung], np.int64),
                tuple((k, self.frames[r[0]]) for k, r in enumerate(rows) if r[0] in self.frames)))
        return tuple(out)

    @cached_property
    def rest_bases(self) -> dict[str, np.ndarray]:
        """The rest pose's torso frames ``[3, 3]`` (see :func:`basis`), by torso joint."""
        out = {}
        for j in set(self.frames.values()):
            up, a, b = (JOINT[n] for n in TORSO_FRAMES[j])
            out[j] = basis(self.rest[up], self.rest[b] - self.rest[a])
        return out

    def rest_offsets(self, lengths: np.ndarray) -> np.ndarray:
        """Local position of every bone in its parent (rest pose, the plan's axes)."""
        rest = skeleton.forward_kinematics(np.zeros(3), self.rest, np.asarray(lengths, float))
        at = {name: JOINT[j] for name, j, _, _ in self.bones}
        return np.array([np.zeros(3) if p is None else rest[at[n]] - rest[at[p]]
                         for n, _, _, p in self.bones])


def _frames(points: np.ndarray, plan: Plan) -> dict[str, np.ndarray]:
    """Global rotation matrices ``[F, 3, 3]`` of the plan's torso frames (they depend on the
    points only): the rest frame turned onto the current one."""
    joints = sorted(set(plan.frames.values()))
    if not joints:
        return {}
    ids = np.array([[JOINT[j], *(JOINT[n] for n in TORSO_FRAMES[j])] for j in joints])
    o, up, a, b = (points[:, ids[:, c]] for c in range(4))  # (F, m, 3)
    cur = basis(up - o, b - a)
    return {j: cur[:, i] @ plan.rest_bases[j].T for i, j in enumerate(joints)}


def solve_plan(points: np.ndarray, plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    """Local and global rotations ``[F, len(plan.bones), 4]`` of ``points [F, 25, 3]`` (the
    plan's axes), one frame per row; all frames and all bones of one depth at once. The chain
    is composed as rotation matrices; swings come from :func:`swing`, quaternions from scipy."""
    points = np.asarray(points, np.float64)
    f, n = points.shape[0], len(plan.bones)
    local = np.tile(np.eye(3), (f, n, 1, 1))
    world = np.tile(np.eye(3), (f, n + 1, 1, 1))  # slot n: the identity, "parent" of the roots
    frames = _frames(points, plan)
    for lv in plan.levels:
        g_parent = world[:, lv.parents]  # (F, k, 3, 3)
        if len(lv.swung):
            d = points[:, lv.child] - points[:, lv.at]  # (F, s, 3)
            d_local = np.einsum("fsji,fsj->fsi", g_parent[:, lv.swung], d)  # R_parent^T d
            rest = np.broadcast_to(plan.rest[lv.child], d.shape).reshape(-1, 3)
            m = swing(rest, d_local.reshape(-1, 3)).as_matrix()
            local[:, lv.bones[lv.swung]] = m.reshape(f, len(lv.swung), 3, 3)
        for pos, joint in lv.frames:
            local[:, lv.bones[pos]] = np.swapaxes(g_parent[:, pos], -1, -2) @ frames[joint]
        world[:, lv.bones] = g_parent @ local[:, lv.bones]
    both = np.concatenate([local, world[:, :n]], axis=1).reshape(-1, 3, 3)
    quats = Rotation.from_matrix(both).as_quat().reshape(f, 2 * n, 4)
    return quats[:, :n], quats[:, n:]


#: The VMC humanoid plan (Unity axes).
VMC = Plan(BONES, REST_DIRECTIONS, _FRAMES)


def rest_offsets(lengths: np.ndarray) -> np.ndarray:
    """Local position of every bone of :data:`BONES` in its parent (Unity axes, T-pose)."""
    return VMC.rest_offsets(lengths)


#: The last call's bodies and results: ``id(array) → (array, its bytes, result)``.
_cache: dict[int, tuple[np.ndarray, bytes, tuple]] = {}


def solve_many(bodies: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """:func:`solve` for several bodies ``[25, 3]`` at once (one batched solve). The results of
    the last call are reused for the same unchanged arrays (several sinks, one frame)."""
    global _cache
    out: list = [None] * len(bodies)
    keys = [np.asarray(j).tobytes() for j in bodies]
    todo = []
    for i, (j, key) in enumerate(zip(bodies, keys)):
        hit = _cache.get(id(j))
        if hit is not None and hit[0] is j and hit[1] == key:
            out[i] = hit[2]
        else:
            todo.append(i)
    if todo:
        p = to_unity(np.stack([np.asarray(bodies[i], np.float64) for i in todo]))
        local, world = solve_plan(p, VMC)
        for k, i in enumerate(todo):
            out[i] = (p[k], local[k], world[k])
    _cache = {id(j): (j, key, r) for j, key, r in zip(bodies, keys, out)}
    return out


def solve(joints: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Solve one body ``[25, 3]`` (Kinect space, metres).

    Returns ``(positions [25, 3] in Unity axes, local rotations [len(BONES), 4],
    global rotations [len(BONES), 4])`` in the order of :data:`BONES`. The last result is
    reused when the same unchanged array is solved again (several sinks, one frame).
    """
    return solve_many([joints])[0]
