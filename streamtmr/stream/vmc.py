"""Bone rotations for avatar protocols (VMC, VRChat) solved from anonymized joint positions.

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

Quaternions are ``(x, y, z, w)`` arrays, rotating column vectors (Unity's ``q * v``).
"""

from __future__ import annotations

import math

import numpy as np

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
_INDEX = {name: i for i, name in enumerate(BONE_NAMES)}
#: Bones whose rotation comes from two directions: (up child, across from, across to).
_FRAMES = {"Hips": ("SpineMid", "HipLeft", "HipRight"),
           "Chest": ("Neck", "ShoulderLeft", "ShoulderRight")}


def to_unity(points: np.ndarray) -> np.ndarray:
    """Kinect camera space (right-handed) → Unity (left-handed): negate X."""
    return points * np.array([-1.0, 1.0, 1.0], dtype=points.dtype)


# --------------------------------------------------------------------------------------------
# Quaternions (x, y, z, w)
# --------------------------------------------------------------------------------------------

def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array([aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw,
                     aw * bw - ax * bx - ay * by - az * bz])


def quat_conj(q: np.ndarray) -> np.ndarray:
    return np.array([-q[0], -q[1], -q[2], q[3]])


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    x, y, z, w = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def quat_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    return quat_to_matrix(q) @ v


def quat_from_matrix(m: np.ndarray) -> np.ndarray:
    """Unit quaternion of a rotation matrix (Shepperd's method, w >= 0)."""
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, s / 4]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [s / 4, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, s / 4, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, s / 4, (m[1, 0] - m[0, 1]) / s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def quat_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The shortest rotation (swing) taking direction ``a`` to direction ``b``."""
    a = a / max(np.linalg.norm(a), 1e-12)
    b = b / max(np.linalg.norm(b), 1e-12)
    d = float(a @ b)
    if d < -1.0 + 1e-9:  # opposite: half turn about any axis orthogonal to a
        axis = np.cross(a, (1.0, 0.0, 0.0) if abs(a[0]) < 0.9 else (0.0, 1.0, 0.0))
        axis /= np.linalg.norm(axis)
        return np.array([axis[0], axis[1], axis[2], 0.0])
    q = np.array([*np.cross(a, b), 1.0 + d])
    return q / np.linalg.norm(q)


def unity_euler(q: np.ndarray) -> np.ndarray:
    """Unity's ``Quaternion.eulerAngles`` in degrees, each in [0, 360): the rotation is
    Z first, then X, then Y (``R = Ry · Rx · Rz``)."""
    m = quat_to_matrix(q)
    x = np.arcsin(np.clip(-m[1, 2], -1.0, 1.0))
    if abs(m[1, 2]) < 1 - 1e-9:
        y = np.arctan2(m[0, 2], m[2, 2])
        z = np.arctan2(m[1, 0], m[1, 1])
    else:  # gimbal lock: put everything in Y
        y = np.arctan2(-m[2, 0], m[0, 0])
        z = 0.0
    return np.degrees(np.array([x, y, z])) % 360.0


def euler_to_quat(deg: np.ndarray) -> np.ndarray:
    """Inverse of :func:`unity_euler` (Unity's ``Quaternion.Euler``)."""
    x, y, z = np.radians(deg)

    def axis(i: int, a: float) -> np.ndarray:
        q = np.zeros(4)
        q[i], q[3] = np.sin(a / 2), np.cos(a / 2)
        return q
    return quat_mul(axis(1, y), quat_mul(axis(0, x), axis(2, z)))


# --------------------------------------------------------------------------------------------
# Pose solving (per frame on the publishing path: plain float math, no tiny numpy arrays)
# --------------------------------------------------------------------------------------------

def _q_mul(a, b):
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return (aw * bx + ax * bw + ay * bz - az * by, aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw, aw * bw - ax * bx - ay * by - az * bz)


def _q_rot(q, v):
    """Rotate v by unit q: v + 2w (u × v) + 2 u × (u × v)."""
    x, y, z, w = q
    vx, vy, vz = v
    tx, ty, tz = 2 * (y * vz - z * vy), 2 * (z * vx - x * vz), 2 * (x * vy - y * vx)
    return (vx + w * tx + y * tz - z * ty, vy + w * ty + z * tx - x * tz,
            vz + w * tz + x * ty - y * tx)


def _unit(v):
    n = math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
    return (v[0] / n, v[1] / n, v[2] / n) if n > 1e-12 else (0.0, 0.0, 0.0)


def _between(a, b):
    """Swing taking unit a to direction b."""
    b = _unit(b)
    d = a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
    if d < -1.0 + 1e-9:  # opposite: half turn about an axis orthogonal to a
        ref = (1.0, 0.0, 0.0) if abs(a[0]) < 0.9 else (0.0, 1.0, 0.0)
        ax = _unit(_cross(a, ref))
        return (ax[0], ax[1], ax[2], 0.0)
    cx, cy, cz = _cross(a, b)
    w = 1.0 + d
    n = math.sqrt(cx * cx + cy * cy + cz * cz + w * w)
    return (cx / n, cy / n, cz / n, w / n)


def _cross(a, b):
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _basis(up, across) -> np.ndarray:
    """Orthonormal frame (columns x, y, z) with y along ``up`` and x towards ``across``."""
    y = _unit(up)
    d = across[0] * y[0] + across[1] * y[1] + across[2] * y[2]
    x = (across[0] - d * y[0], across[1] - d * y[1], across[2] - d * y[2])
    if math.sqrt(x[0] * x[0] + x[1] * x[1] + x[2] * x[2]) < 1e-9:  # degenerate
        x = _cross(y, (0.0, 0.0, 1.0) if abs(y[2]) < 0.9 else (1.0, 0.0, 0.0))
    x = _unit(x)
    z = _cross(x, y)
    return np.array([[x[0], y[0], z[0]], [x[1], y[1], z[1]], [x[2], y[2], z[2]]])


_REST = [tuple(float(c) for c in d) for d in REST_DIRECTIONS]
_REST_BASES = {name: _basis(REST_DIRECTIONS[JOINT[up]],
                            REST_DIRECTIONS[JOINT[b]] - REST_DIRECTIONS[JOINT[a]])
               for name, (up, a, b) in _FRAMES.items()}
_PLAN = tuple((name, JOINT[at], None if child is None else JOINT[child],
               None if parent is None else _INDEX[parent]) for name, at, child, parent in BONES)


def rest_offsets(lengths: np.ndarray) -> np.ndarray:
    """Local position of every bone of :data:`BONES` in its parent (Unity axes, T-pose)."""
    rest = skeleton.forward_kinematics(np.zeros(3), REST_DIRECTIONS, np.asarray(lengths, float))
    out = np.zeros((len(BONES), 3))
    for i, (_, at, _, parent) in enumerate(BONES):
        if parent is not None:
            out[i] = rest[JOINT[at]] - rest[JOINT[BONES[_INDEX[parent]][1]]]
    return out


_cache: tuple[np.ndarray, bytes, tuple] | None = None


def solve(joints: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Solve one body ``[25, 3]`` (Kinect space, metres).

    Returns ``(positions [25, 3] in Unity axes, local rotations [len(BONES), 4],
    global rotations [len(BONES), 4])`` in the order of :data:`BONES`. The last result is
    reused when the same unchanged array is solved again (several sinks, one frame).
    """
    global _cache
    raw = np.asarray(joints)
    key = raw.tobytes()
    if _cache is not None and _cache[0] is joints and _cache[1] == key:
        return _cache[2]
    p = to_unity(raw.astype(np.float64))
    pl = p.tolist()
    local: list[tuple] = []
    world: list[tuple] = []
    ident = (0.0, 0.0, 0.0, 1.0)
    for name, at, child, parent in _PLAN:
        g_parent = world[parent] if parent is not None else ident
        inv = (-g_parent[0], -g_parent[1], -g_parent[2], g_parent[3])
        if name in _FRAMES:
            up, a, b = (pl[JOINT[n]] for n in _FRAMES[name])
            o = pl[at]
            cur = _basis((up[0] - o[0], up[1] - o[1], up[2] - o[2]),
                         (b[0] - a[0], b[1] - a[1], b[2] - a[2]))
            g = tuple(float(c) for c in quat_from_matrix(cur @ _REST_BASES[name].T))
            loc = _q_mul(inv, g)
        elif child is None:
            loc = ident
        else:
            c, o = pl[child], pl[at]
            d_local = _q_rot(inv, (c[0] - o[0], c[1] - o[1], c[2] - o[2]))
            loc = _between(_REST[child], d_local)
        g = _q_mul(g_parent, loc)
        n = math.sqrt(sum(v * v for v in g))
        local.append(loc)
        world.append((g[0] / n, g[1] / n, g[2] / n, g[3] / n))
    result = (p, np.array(local), np.array(world))
    _cache = (joints, key, result)
    return result
