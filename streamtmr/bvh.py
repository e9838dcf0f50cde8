"""BVH (Biovision Hierarchy) files of anonymized bodies, for Blender, MotionBuilder, Unity
importers and the like.

HIERARCHY: every Kinect v2 joint is a joint named as in :data:`streamtmr.skeleton.JOINT_NAMES`
(root SpineBase), rest pose the T-pose of :mod:`streamtmr.stream.vmc` facing +Z, offsets the
dummy's bone lengths along it. A joint with several children (SpineBase, SpineShoulder, the
wrists) orients its main child (SpineMid, Neck, Hand) with its own rotation and each other child
through a zero-offset joint named ``<Child>Root`` (e.g. ``HipLeftRoot``), so every bone has its
own rotation and forward kinematics reproduces every joint position. Leaves carry an End Site
half their bone's length further along it.

MOTION: one line per frame at 30 Hz (``Frame Time: 0.0333333``): the root position, then
``Zrotation Xrotation Yrotation`` of every joint in degrees (``R = Rz · Rx · Ry`` applied to
column vectors, the BVH convention). Units are centimetres; axes are Kinect camera space
(right-handed, Y up; a person facing the sensor faces -Z). Rotations are solved from positions
by :func:`streamtmr.stream.vmc.solve_plan`, the solver of the avatar sinks (twist about a bone
is not observable from positions and stays zero; the torso keeps its yaw from the hip and
shoulder lines).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from streamtmr.skeleton import JOINT, JOINT_NAMES, NUM_JOINTS, PARENTS, TOPO_ORDER
from streamtmr.stream import vmc

FPS = 30.0
#: Centimetres per metre: BVH positions and offsets are in centimetres.
SCALE = 100.0
ROOT_CHANNELS = "CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation"
JOINT_CHANNELS = "CHANNELS 3 Zrotation Xrotation Yrotation"
EULER = "ZXY"  # scipy intrinsic order matching JOINT_CHANNELS


def _plan() -> vmc.Plan:
    """One bone per BVH joint, in Kinect axes (see the module)."""
    children = {p: [c for c in range(NUM_JOINTS) if PARENTS[c] == p] for p in range(NUM_JOINTS)}
    bones: list[tuple[str, str, str | None, str | None]] = []
    placed_by: dict[int, str | None] = {TOPO_ORDER[0]: None}  # joint → bone that places it
    for j in TOPO_ORDER:
        name = JOINT_NAMES[j]
        kids = children[j]
        main = JOINT[vmc.TORSO_FRAMES[name][0]] if name in vmc.TORSO_FRAMES else \
            (kids[0] if kids else None)
        bones.append((name, name, None if main is None else JOINT_NAMES[main], placed_by[j]))
        if main is not None:
            placed_by[main] = name
        for c in kids:
            if c != main:
                bones.append((f"{JOINT_NAMES[c]}Root", name, JOINT_NAMES[c], name))
                placed_by[c] = f"{JOINT_NAMES[c]}Root"
    frames = {n: n for n in vmc.TORSO_FRAMES}
    return vmc.Plan(tuple(bones), vmc.to_unity(vmc.REST_DIRECTIONS), frames)


#: The BVH joints as a rotation plan (Kinect axes).
PLAN = _plan()


def _depth_first(plan: vmc.Plan) -> list[int]:
    kids: dict[str | None, list[int]] = {}
    for i, (_, _, _, parent) in enumerate(plan.bones):
        kids.setdefault(parent, []).append(i)
    order: list[int] = []

    def visit(i: int) -> None:
        order.append(i)
        for k in kids.get(plan.bones[i][0], []):
            visit(k)
    for root in kids[None]:
        visit(root)
    return order


def hierarchy(lengths: np.ndarray) -> tuple[str, list[int]]:
    """The HIERARCHY section for a dummy's bone lengths ``[25]`` (metres), and the plan
    indices of its joints in file (channel) order."""
    offsets = PLAN.rest_offsets(lengths) * SCALE
    order = _depth_first(PLAN)
    kids = {b[0]: [i for i in order if PLAN.bones[i][3] == b[0]] for b in PLAN.bones}
    lines = ["HIERARCHY"]

    def emit(i: int, depth: int) -> None:
        name, at, _, parent = PLAN.bones[i]
        pad = "  " * depth
        lines.append(f"{pad}{'ROOT' if parent is None else 'JOINT'} {name}")
        lines.append(f"{pad}{{")
        lines.append(f"{pad}  OFFSET {' '.join(f'{v:.6f}' for v in offsets[i])}")
        lines.append(f"{pad}  {ROOT_CHANNELS if parent is None else JOINT_CHANNELS}")
        for k in kids[name]:
            emit(k, depth + 1)
        if not kids[name]:
            j = JOINT[at]
            end = PLAN.rest[j] * float(lengths[j]) * 0.5 * SCALE
            lines.extend([f"{pad}  End Site", f"{pad}  {{",
                          f"{pad}    OFFSET {' '.join(f'{v:.6f}' for v in end)}", f"{pad}  }}"])
        lines.append(f"{pad}}}")
    emit(order[0], 0)
    return "\n".join(lines), order


def motion(joints: np.ndarray, order: Sequence[int], fps: float = FPS) -> str:
    """The MOTION section of a sequence ``[T, 25, 3]`` (metres, Kinect axes)."""
    joints = np.asarray(joints, np.float64)
    local, _ = vmc.solve_plan(joints, PLAN)
    with warnings.catch_warnings():  # gimbal lock: any valid decomposition reproduces the pose
        warnings.simplefilter("ignore", UserWarning)
        euler = Rotation.from_quat(local[:, order].reshape(-1, 4)).as_euler(EULER, degrees=True)
    euler = euler.reshape(len(joints), len(order) * 3)
    values = np.concatenate([joints[:, TOPO_ORDER[0]] * SCALE, euler], axis=1)
    rows = (" ".join(f"{v:.6f}" for v in row) for row in values)
    return "\n".join(["MOTION", f"Frames: {len(joints)}", f"Frame Time: {1.0 / fps:.7f}",
                      *rows])


def write(path: str | Path, joints: np.ndarray, lengths: np.ndarray, fps: float = FPS) -> Path:
    """Write one body's sequence ``[T, 25, 3]`` with the dummy's ``lengths`` as a BVH file."""
    joints = np.asarray(joints)
    if joints.ndim != 3 or joints.shape[1:] != (NUM_JOINTS, 3) or len(joints) == 0:
        raise ValueError(f"{path}: expected a sequence [T, 25, 3], got {list(joints.shape)}")
    text, order = hierarchy(lengths)
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: folder {path.parent} does not exist")
    path.write_text(f"{text}\n{motion(joints, order, fps)}\n")
    return path


def body_paths(output: str | Path, n: int) -> list[Path]:
    """``x.bvh`` for one body, ``x_body0.bvh`` … ``x_body<n-1>.bvh`` for several."""
    out = Path(output)
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}_body{k}{out.suffix}") for k in range(n)]


def anonymize_to_bvh(engine, input: str | Path, output: str | Path, hop: int | None = None,
                     progress: bool = False, streamed: bool | None = None):
    """Read ``input`` (as :func:`streamtmr.offline.load_sequences`), anonymize every body with
    ``engine`` exactly as :func:`streamtmr.offline.anonymize_file` does (``streamed``: the
    node's path, default for streaming models; else stitched windows) and write one BVH file
    per body (:func:`body_paths`). Returns the :class:`streamtmr.offline.Report` (its
    ``output`` the first file) and the body names with their paths."""
    from streamtmr.offline import Report, anonymize_loaded, load_sequences

    loaded = load_sequences(input)
    result, substituted, seconds = anonymize_loaded(engine, loaded.sequences, hop, progress,
                                                    streamed)
    paths = body_paths(output, len(result))
    for path, seq in zip(paths, result, strict=True):
        write(path, seq, engine.dummy_lengths)
    report = Report(len(result), sum(len(s) for s in result), seconds, paths[0], substituted)
    return report, list(zip(loaded.names, paths, strict=True))
