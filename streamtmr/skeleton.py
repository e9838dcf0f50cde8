"""Kinect v2 skeleton geometry: the one place for joints, bones, forward kinematics and frames.

Pure functions, no I/O. Every function accepts numpy arrays or torch tensors with any leading
dimensions (``[..., 25, 3]`` for joints, ``[..., 25]`` for per-bone values) and returns the same
kind of array it was given.

Conventions
-----------
* Kinect v2 camera space: metres, X to the sensor's left, Y up, Z away from the sensor.
* Bones are indexed by their *child* joint: bone ``j`` joins ``PARENTS[j]`` to ``j``. Index 0
  (the root, SpineBase) has no bone, so per-bone arrays have 25 entries with entry 0 unused
  (always 0 length). ``BONES`` lists the 24 real (parent, child) pairs.
* Forward kinematics is a single matrix product with the ancestor matrix (no loop over joints),
  which keeps it cheap on the streaming hot path and exportable to ONNX.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

# --------------------------------------------------------------------------------------------
# Topology
# --------------------------------------------------------------------------------------------

JOINT_NAMES: tuple[str, ...] = (
    "SpineBase", "SpineMid", "Neck", "Head",
    "ShoulderLeft", "ElbowLeft", "WristLeft", "HandLeft",
    "ShoulderRight", "ElbowRight", "WristRight", "HandRight",
    "HipLeft", "KneeLeft", "AnkleLeft", "FootLeft",
    "HipRight", "KneeRight", "AnkleRight", "FootRight",
    "SpineShoulder", "HandTipLeft", "ThumbLeft", "HandTipRight", "ThumbRight",
)
NUM_JOINTS = 25
JOINT = {name: i for i, name in enumerate(JOINT_NAMES)}

#: Kinect SDK parent of each JointType (-1 for the root, SpineBase).
PARENTS: tuple[int, ...] = (
    -1, 0, 20, 2, 20, 4, 5, 6, 20, 8, 9, 10, 0, 12, 13, 14, 0, 16, 17, 18, 1, 7, 6, 11, 10,
)
ROOT = 0
#: The 24 bones as (parent, child) pairs, ordered by child index.
BONES: tuple[tuple[int, int], ...] = tuple((PARENTS[j], j) for j in range(1, NUM_JOINTS))
NUM_BONES = len(BONES)

#: Joints in an order where every parent comes before its children.
TOPO_ORDER: tuple[int, ...]


def _topological_order() -> tuple[int, ...]:
    order, seen = [ROOT], {ROOT}
    while len(order) < NUM_JOINTS:
        for j in range(NUM_JOINTS):
            if j not in seen and PARENTS[j] in seen:
                order.append(j)
                seen.add(j)
    return tuple(order)


TOPO_ORDER = _topological_order()


def _ancestor_matrix() -> np.ndarray:
    """A[j, b] = 1 when bone b lies on the chain from the root to joint j (b = j included)."""
    a = np.zeros((NUM_JOINTS, NUM_JOINTS), dtype=np.float32)
    for j in range(NUM_JOINTS):
        k = j
        while k != ROOT:
            a[j, k] = 1.0
            k = PARENTS[k]
    return a


ANCESTORS = _ancestor_matrix()
_PARENT_INDEX = np.array([0] + list(PARENTS[1:]), dtype=np.int64)  # root maps to itself

LEFT = tuple(i for i, n in enumerate(JOINT_NAMES) if n.endswith("Left"))
RIGHT = tuple(JOINT[n[: -len("Left")] + "Right"] for n in JOINT_NAMES if n.endswith("Left"))
#: Index permutation that swaps left and right joints (for mirroring).
MIRROR: tuple[int, ...] = tuple(
    RIGHT[LEFT.index(j)] if j in LEFT else LEFT[RIGHT.index(j)] if j in RIGHT else j
    for j in range(NUM_JOINTS)
)

HEAD = (JOINT["Head"],)
HANDS = (JOINT["HandLeft"], JOINT["HandRight"], JOINT["HandTipLeft"], JOINT["HandTipRight"])
FEET = (JOINT["AnkleLeft"], JOINT["FootLeft"], JOINT["AnkleRight"], JOINT["FootRight"])
_FEET_INDEX = np.asarray(FEET, np.int64)
#: End effectors used by end-effector-weighted losses: head, hands and feet.
END_EFFECTORS = (JOINT["Head"], JOINT["HandLeft"], JOINT["HandRight"], JOINT["FootLeft"],
                 JOINT["FootRight"])
#: Adjacency (with self loops) of the joint graph, for graph convolutions.
ADJACENCY = np.eye(NUM_JOINTS, dtype=np.float32)
for _p, _c in BONES:
    ADJACENCY[_p, _c] = ADJACENCY[_c, _p] = 1.0

#: Joint chains used for size measures.
#: (Bones are named by their child joint.) Thigh and shank of the left leg.
LEG_CHAIN = (JOINT["KneeLeft"], JOINT["AnkleLeft"])
#: Spine, neck, head, thigh and shank: a standing-height proxy (ankle to head joint).
HEIGHT_CHAIN = (JOINT["SpineMid"], JOINT["SpineShoulder"], JOINT["Neck"], JOINT["Head"],
                JOINT["KneeLeft"], JOINT["AnkleLeft"])
#: Index arrays of the chains above (``chain_length`` also accepts any other tuple).
_CHAIN_INDEX: dict[tuple[int, ...], np.ndarray] = {}

EPS = 1e-8


# --------------------------------------------------------------------------------------------
# numpy / torch dispatch (tiny: only what the functions below need)
# --------------------------------------------------------------------------------------------

def _is_torch(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


#: Module-level constants already copied to a device, keyed by (id, dtype, device). Creating
#: them once matters on CUDA: a host→device copy inside a forward pass costs a synchronising
#: transfer per call and is not allowed during CUDA-graph capture.
_DEVICE_CONSTANTS: dict[tuple[int, Any, Any], torch.Tensor] = {}


def device_constant(a: Any, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``a`` (a module-level numpy array or tuple that lives as long as the program) as a
    tensor on ``like``'s device, with ``dtype`` (default ``like.dtype``), created once per
    device. Never pass a temporary: the cache is keyed by the object's identity."""
    dtype = dtype or like.dtype
    key = (id(a), dtype, like.device)
    t = _DEVICE_CONSTANTS.get(key)
    if t is None:
        with torch.inference_mode(False):  # a normal tensor: autograd may save it later
            t = torch.as_tensor(np.asarray(a), dtype=dtype, device=like.device)
        _DEVICE_CONSTANTS[key] = t
    return t


def _const(a: np.ndarray, like: Any):
    """A module-level constant array in the type of ``like`` (numpy or a tensor's device)."""
    if _is_torch(like):
        return device_constant(a, like)
    return a.astype(like.dtype, copy=False) if np.issubdtype(like.dtype, np.floating) else a


def _take_joints(x: Any, index: np.ndarray, axis: int = -2):
    """``x`` indexed by a constant joint ``index`` along ``axis`` (numpy or torch)."""
    if _is_torch(x):
        return x.index_select(axis, device_constant(index, x, torch.long))
    return np.take(x, index, axis=axis)


def _norm(x: Any, keepdims: bool = False):
    if _is_torch(x):
        return torch.linalg.vector_norm(x, dim=-1, keepdim=keepdims)
    return np.linalg.norm(x, axis=-1, keepdims=keepdims)


def _matmul_joints(a: np.ndarray, v: Any):
    """(A @ v) over the joint axis: a [25, 25], v [..., 25, 3]."""
    if _is_torch(v):
        return torch.matmul(_const(a, v), v)
    return np.matmul(a.astype(v.dtype), v)


# --------------------------------------------------------------------------------------------
# Bones and forward kinematics
# --------------------------------------------------------------------------------------------

def bone_vectors(joints):
    """Vector from parent to child for every joint: ``[..., 25, 3]`` (root entry is 0)."""
    return joints - _take_joints(joints, _PARENT_INDEX)


def bone_lengths(joints):
    """Length of every bone: ``[..., 25]`` (root entry is 0)."""
    return _norm(bone_vectors(joints))


def bone_directions(joints):
    """Unit direction of every bone ``[..., 25, 3]``; zero-length bones give a zero vector."""
    v = bone_vectors(joints)
    n = _norm(v, keepdims=True)
    if _is_torch(v):
        return v / n.clamp_min(EPS)
    return v / np.maximum(n, EPS)


def forward_kinematics(root, directions, lengths):
    """Joints from a root position, unit bone directions and bone lengths.

    root ``[..., 3]``, directions ``[..., 25, 3]`` (entry 0 ignored), lengths ``[..., 25]`` or
    ``[25]`` (broadcast; entry 0 ignored). Returns joints ``[..., 25, 3]`` whose bone lengths are
    exactly ``lengths`` when the directions are unit vectors.
    """
    offsets = directions * lengths[..., None]
    if _is_torch(offsets):
        offsets = offsets.clone()
        offsets[..., ROOT, :] = 0
    else:
        offsets = offsets.copy()
        offsets[..., ROOT, :] = 0
    return root[..., None, :] + _matmul_joints(ANCESTORS, offsets)


def set_bone_lengths(joints, lengths):
    """Keep every bone's direction and the root position, replace the bone lengths."""
    return forward_kinematics(joints[..., ROOT, :], bone_directions(joints), lengths)


def chain_length(lengths, chain: tuple[int, ...]):
    """Sum of the bone lengths of the given child joints: ``[...]``."""
    chain = tuple(int(j) for j in chain)
    if chain not in _CHAIN_INDEX:
        _CHAIN_INDEX[chain] = np.asarray(chain, np.int64)
    return _take_joints(lengths, _CHAIN_INDEX[chain], axis=-1).sum(-1)


def leg_length(lengths):
    """Hip→knee→ankle length of the left leg, the scale used for root motion."""
    return chain_length(lengths, LEG_CHAIN)


def standing_height(lengths):
    """Approximate standing height: ankle to head joint along spine and leg (metres)."""
    return chain_length(lengths, HEIGHT_CHAIN)


def rescale_root(joints, scale, ref_frame: int = 0):
    """Scale root displacement (relative to ``ref_frame``) by ``scale`` along time axis -3.

    joints ``[..., T, 25, 3]``; scale broadcastable to ``[...]``. Limb pose is unchanged: the
    whole skeleton of each frame moves with its rescaled root.
    """
    root = joints[..., :, ROOT, :]
    ref = root[..., ref_frame : ref_frame + 1, :]
    if not _is_torch(joints):
        scale = np.asarray(scale, dtype=joints.dtype)
    shift = (root - ref) * (scale[..., None, None] - 1)
    return joints + shift[..., None, :]


_HORIZONTAL = np.array([1.0, 0.0, 1.0], np.float32)   # keeps x and z of a point


def leashed(pos: torch.Tensor, target: torch.Tensor, length: float, first: torch.Tensor
            ) -> torch.Tensor:
    """``pos [B, 3]`` pulled horizontally to within ``length`` of ``target [B, 3]`` (kept where
    it is within reach; ``target`` where ``first [B]``: a fresh track). Height is not
    constrained."""
    d = (pos - target) * device_constant(_HORIZONTAL, pos)
    reach = d.norm(dim=-1, keepdim=True)
    pulled = pos - d * (1.0 - length / reach.clamp_min(EPS)).clamp_min(0.0)
    return torch.where(first[:, None], target, pulled)


def floor_height(seq):
    """Height (Y) of the lowest foot point over a window ``[..., T, 25, 3]`` → ``[...]``: the
    floor the body stands on at least once in the window."""
    feet = _take_joints(seq, _FEET_INDEX)[..., 1]
    if _is_torch(feet):
        return feet.flatten(-2).amin(-1)
    return feet.reshape(*feet.shape[:-2], -1).min(-1)


def place_on_floor(seq, floor):
    """Shift ``seq [..., T, 25, 3]`` vertically so that its lowest foot point is at ``floor``
    (``[...]``); with Y up this stands a retargeted body on the source's floor."""
    dy = floor - floor_height(seq)
    if _is_torch(seq):
        zero = torch.zeros_like(dy)
        return seq + torch.stack([zero, dy, zero], -1)[..., None, None, :]
    shift = np.zeros(seq.shape[:-3] + (1, 1, 3), seq.dtype)
    shift[..., 1] = dy[..., None, None]
    return seq + shift


# --------------------------------------------------------------------------------------------
# Canonical frame: root-centred, hips facing a fixed axis
# --------------------------------------------------------------------------------------------

def facing_angle(joints):
    """Rotation angle about +Y that takes the HipLeft→HipRight vector onto +X: ``[...]``."""
    hip = joints[..., JOINT["HipRight"], :] - joints[..., JOINT["HipLeft"], :]
    if _is_torch(hip):
        return torch.atan2(hip[..., 2], hip[..., 0])
    return np.arctan2(hip[..., 2], hip[..., 0])


def rotation_y(angle):
    """Rotation matrices about +Y: ``[..., 3, 3]`` (right-handed; v' = R @ v)."""
    if _is_torch(angle):
        c, s = torch.cos(angle), torch.sin(angle)
        o, z = torch.ones_like(c), torch.zeros_like(c)
        rows = [torch.stack(r, -1) for r in ((c, z, s), (z, o, z), (-s, z, c))]
        return torch.stack(rows, -2)
    c, s = np.cos(angle), np.sin(angle)
    o, z = np.ones_like(c), np.zeros_like(c)
    return np.stack([np.stack(r, -1) for r in ((c, z, s), (z, o, z), (-s, z, c))], -2)


def _rotate(points, rot):
    """Apply rotation matrices ``[..., 3, 3]`` to points ``[..., N, 3]``."""
    if _is_torch(points):
        return torch.matmul(points, rot.transpose(-1, -2))
    return np.matmul(points, np.swapaxes(rot, -1, -2))


def canonical_frame(seq, ref_frame: int = 0):
    """Rotation ``[..., 3, 3]`` and origin ``[..., 3]`` of the canonical frame of a sequence.

    seq ``[..., T, 25, 3]``. The origin is the root (SpineBase) at ``ref_frame``, projected to
    keep its height; the rotation turns the hips of ``ref_frame`` to face +X about the vertical.
    """
    ref = seq[..., ref_frame, :, :]
    rot = rotation_y(facing_angle(ref))
    origin = ref[..., ROOT, :]
    return rot, origin


def to_canonical(seq, rot, origin):
    """Express ``seq [..., T, 25, 3]`` in the frame given by ``canonical_frame``."""
    flat = seq.reshape(*seq.shape[:-3], -1, 3)
    out = _rotate(flat - origin[..., None, :], rot)
    return out.reshape(seq.shape)


def to_frame_local(points, rot, origin):
    """Per-frame :func:`to_canonical`: points ``[..., 25, 3]`` in the frame of ``rot [..., 3,
    3]`` and ``origin [..., 3]`` (one rotation and origin per frame, e.g. each frame's own
    heading frame)."""
    return to_canonical(points[..., None, :, :], rot, origin)[..., 0, :, :]


def from_canonical(canon, rot, origin):
    """Inverse of :func:`to_canonical`."""
    flat = canon.reshape(*canon.shape[:-3], -1, 3)
    out = _rotate(flat, rot.transpose(-1, -2) if _is_torch(rot) else np.swapaxes(rot, -1, -2))
    return (out + origin[..., None, :]).reshape(canon.shape)


def canonicalize(seq, ref_frame: int = 0):
    """Root-centre and face-align a sequence. Returns ``(canon, rot, origin)``."""
    rot, origin = canonical_frame(seq, ref_frame)
    return to_canonical(seq, rot, origin), rot, origin


# --------------------------------------------------------------------------------------------
# Other joint layouts mapped into Kinect v2's 25 joints
# --------------------------------------------------------------------------------------------

#: Kinect v1 SDK order (also UTKinect-Action3D): HipCenter, Spine, ShoulderCenter, Head, then
#: the limbs in the same order as Kinect v2 joints 4–19.
KINECT_V1_NAMES: tuple[str, ...] = (
    "HipCenter", "Spine", "ShoulderCenter", "Head",
    "ShoulderLeft", "ElbowLeft", "WristLeft", "HandLeft",
    "ShoulderRight", "ElbowRight", "WristRight", "HandRight",
    "HipLeft", "KneeLeft", "AnkleLeft", "FootLeft",
    "HipRight", "KneeRight", "AnkleRight", "FootRight",
)
#: MSR Action3D order (Li, Zhang, Liu 2010), in Kinect v1 names.
MSR_ACTION3D_ORDER: tuple[str, ...] = (
    "ShoulderRight", "ShoulderLeft", "ShoulderCenter", "Spine", "HipRight", "HipLeft",
    "HipCenter", "ElbowRight", "ElbowLeft", "WristRight", "WristLeft", "HandRight", "HandLeft",
    "KneeRight", "KneeLeft", "AnkleRight", "AnkleLeft", "FootRight", "FootLeft", "Head",
)
_V1_TO_V2 = {"HipCenter": "SpineBase", "Spine": "SpineMid", "ShoulderCenter": "SpineShoulder"}

#: Ratios measured on the real NTU RGB+D samples (medians over 5 recordings) used to synthesise
#: the joints Kinect v1 lacks:
#: Neck = SpineShoulder + NECK_RATIO · (Head − SpineShoulder);
#: HandTip = Hand + HANDTIP_RATIO · (Hand − Wrist);
#: Thumb = Wrist + THUMB_RATIO · (Hand − Wrist) (placed on the wrist→hand line: v1 has no thumb).
NECK_RATIO = 0.35
HANDTIP_RATIO = 0.65
THUMB_RATIO = 1.2


def _v1_to_v2(named: dict[str, Any], like):
    xp_stack = torch.stack if _is_torch(like) else np.stack
    out = {}
    for name in KINECT_V1_NAMES:
        out[_V1_TO_V2.get(name, name)] = named[name]
    ss, head = out["SpineShoulder"], out["Head"]
    out["Neck"] = ss + NECK_RATIO * (head - ss)
    for side in ("Left", "Right"):
        wrist, hand = out["Wrist" + side], out["Hand" + side]
        out["HandTip" + side] = hand + HANDTIP_RATIO * (hand - wrist)
        out["Thumb" + side] = wrist + THUMB_RATIO * (hand - wrist)
    return xp_stack([out[n] for n in JOINT_NAMES], -2)


def from_kinect_v1(joints20):
    """Kinect v1 / UTKinect 20 joints ``[..., 20, 3]`` (metres) → Kinect v2 25 joints."""
    if joints20.shape[-2:] != (20, 3):
        raise ValueError(f"expected [..., 20, 3] Kinect v1 joints, got {tuple(joints20.shape)}")
    named = {n: joints20[..., i, :] for i, n in enumerate(KINECT_V1_NAMES)}
    return _v1_to_v2(named, joints20)


def to_kinect_v1(joints):
    """Kinect v2 25 joints ``[..., 25, 3]`` → the 20 Kinect v1 measures (``KINECT_V1_NAMES``
    order): what a v1 sensor would report of the same body, for :func:`from_kinect_v1`."""
    if joints.shape[-2:] != (NUM_JOINTS, 3):
        raise ValueError(f"expected [..., 25, 3] Kinect v2 joints, got {tuple(joints.shape)}")
    index = [JOINT_NAMES.index(_V1_TO_V2.get(n, n)) for n in KINECT_V1_NAMES]
    return joints[..., index, :]


def from_msr_action3d(joints20):
    """MSR Action3D 20 joints ``[..., 20, 3]`` (its own order, metres) → Kinect v2 25 joints."""
    if joints20.shape[-2:] != (20, 3):
        raise ValueError(f"expected [..., 20, 3] MSR Action3D joints, got {tuple(joints20.shape)}")
    named = {n: joints20[..., i, :] for i, n in enumerate(MSR_ACTION3D_ORDER)}
    return _v1_to_v2(named, joints20)


#: Azure Kinect body tracking joints (k4abt_joint_id_t), 32 of them.
AZURE_KINECT_NAMES: tuple[str, ...] = (
    "PELVIS", "SPINE_NAVEL", "SPINE_CHEST", "NECK", "CLAVICLE_LEFT", "SHOULDER_LEFT",
    "ELBOW_LEFT", "WRIST_LEFT", "HAND_LEFT", "HANDTIP_LEFT", "THUMB_LEFT", "CLAVICLE_RIGHT",
    "SHOULDER_RIGHT", "ELBOW_RIGHT", "WRIST_RIGHT", "HAND_RIGHT", "HANDTIP_RIGHT", "THUMB_RIGHT",
    "HIP_LEFT", "KNEE_LEFT", "ANKLE_LEFT", "FOOT_LEFT", "HIP_RIGHT", "KNEE_RIGHT", "ANKLE_RIGHT",
    "FOOT_RIGHT", "HEAD", "NOSE", "EYE_LEFT", "EAR_LEFT", "EYE_RIGHT", "EAR_RIGHT",
)
#: Kinect v2 joint ← Azure Kinect joint(s) (averaged when several).
AZURE_TO_V2: dict[str, tuple[str, ...]] = {
    "SpineBase": ("PELVIS",), "SpineMid": ("SPINE_CHEST",), "SpineShoulder": ("NECK",),
    "Neck": ("NECK", "HEAD"), "Head": ("HEAD",),
    **{f"{v2}{s}": (f"{az}_{s.upper()}",) for s in ("Left", "Right") for v2, az in (
        ("Shoulder", "SHOULDER"), ("Elbow", "ELBOW"), ("Wrist", "WRIST"), ("Hand", "HAND"),
        ("Hip", "HIP"), ("Knee", "KNEE"), ("Ankle", "ANKLE"), ("Foot", "FOOT"),
        ("HandTip", "HANDTIP"), ("Thumb", "THUMB"))},
}
_AZ = {n: i for i, n in enumerate(AZURE_KINECT_NAMES)}
AZURE_MAP = np.zeros((NUM_JOINTS, len(AZURE_KINECT_NAMES)), dtype=np.float32)
for _name, _srcs in AZURE_TO_V2.items():
    for _s in _srcs:
        AZURE_MAP[JOINT[_name], _AZ[_s]] = 1.0 / len(_srcs)
#: Azure depth-camera axes (X right, Y down, Z forward, mm) → Kinect v2 (X left, Y up, metres).
AZURE_AXES = np.array([-1e-3, -1e-3, 1e-3], dtype=np.float32)


def from_azure_kinect(joints32_mm):
    """Azure Kinect 32 joints ``[..., 32, 3]`` in millimetres → Kinect v2 25 joints in metres."""
    if joints32_mm.shape[-2:] != (32, 3):
        raise ValueError(
            f"expected [..., 32, 3] Azure Kinect joints, got {tuple(joints32_mm.shape)}")
    mapped = _matmul_joints(AZURE_MAP, joints32_mm)
    return mapped * _const(AZURE_AXES, mapped)


_MIRROR_INDEX = np.asarray(MIRROR, np.int64)
_MIRROR_SIGN = np.array([-1.0, 1.0, 1.0], dtype=np.float32)


def mirror(joints):
    """Mirror a skeleton left↔right (negate X, swap left and right joints)."""
    out = _take_joints(joints, _MIRROR_INDEX)
    return out * _const(_MIRROR_SIGN, out)


def angle_between(u, v):
    """Angle in radians between vectors ``[..., 3]``."""
    nu, nv = _norm(u), _norm(v)
    dot = (u * v).sum(-1)
    if _is_torch(u):
        return torch.acos((dot / (nu * nv).clamp_min(EPS)).clamp(-1.0, 1.0))
    return np.arccos(np.clip(dot / np.maximum(nu * nv, EPS), -1.0, 1.0))


