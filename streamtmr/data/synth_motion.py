"""SynthKinect motion: joint-angle keyframes per action and the pose → bone-direction map.

A pose is a vector of :data:`DOFS` joint angles (degrees in keyframes, radians inside the
kinematics). Angles are local: each bone's rotation is relative to its parent bone's frame, so
``pose_directions`` composes them down the Kinect v2 tree (one batched matrix product per tree
level) and returns unit bone directions for :func:`streamtmr.skeleton.forward_kinematics`.

Body frame of a pose: x = the person's left, y = up, z = the person's forward. Limb DOFs are
defined for the left side; the right side uses the mirror image, so equal angles on both sides
give a left/right-symmetric pose. Signs (all degrees):

* ``yaw`` body facing (about +y); ``sp_flex``/``ch_flex``/``nk_flex``/``hd_flex`` forward flexion
  of the lower spine, upper spine, neck and head; ``sp_side``/``hd_roll`` bend towards the left;
  ``sp_twist`` turns the chest towards the left.
* ``cl_elev`` shrug, ``cl_prot`` shoulder protraction; ``sh_elev`` arm elevation from hanging,
  in the vertical plane at azimuth ``sh_plane`` (0 forward, 90 sideways, negative across the
  body, beyond 90 behind); ``sh_twist`` internal rotation; ``el_flex``/``wr_flex`` flexion.
* ``hp_flex`` thigh forward, ``hp_abd`` abduction, ``hp_rot`` external rotation (toe-out),
  ``kn_flex`` knee flexion, ``an_flex`` dorsiflexion (a foot stays flat when
  ``an_flex = kn_flex - hp_flex``).

Actions are written for a right-handed performer: suffix ``_D`` is the dominant (right) side,
``_N`` the other one, ``_B`` both. :func:`mirror_pose` turns them into left-handed versions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from streamtmr import skeleton

TRUNK_DOFS = ("yaw", "sp_flex", "sp_side", "sp_twist", "ch_flex", "nk_flex", "hd_flex", "hd_roll")
LIMB_DOFS = ("cl_elev", "cl_prot", "sh_elev", "sh_plane", "sh_twist", "el_flex", "wr_flex",
             "hp_flex", "hp_abd", "hp_rot", "kn_flex", "an_flex")
DOFS: tuple[str, ...] = TRUNK_DOFS + tuple(f"{d}_{s}" for s in "LR" for d in LIMB_DOFS)
NUM_DOFS = len(DOFS)
DOF = {name: i for i, name in enumerate(DOFS)}
#: DOFs whose sign flips under left/right mirroring.
LATERAL = ("yaw", "sp_side", "sp_twist", "hd_roll")
_MIRROR_PERM = np.array([DOF[n.replace("_L", "_X").replace("_R", "_L").replace("_X", "_R")]
                         if n[-2:] in ("_L", "_R") else DOF[n] for n in DOFS])
_MIRROR_SIGN = np.array([-1.0 if n in LATERAL else 1.0 for n in DOFS])
#: Arm swing plane and body facing are directions, not amplitudes: style never scales them.
UNSCALED = ("yaw", "sh_plane_L", "sh_plane_R")


def mirror_pose(angles: np.ndarray) -> np.ndarray:
    """Left/right mirror image of poses ``[..., NUM_DOFS]``."""
    return angles[..., _MIRROR_PERM] * _MIRROR_SIGN


# --------------------------------------------------------------------------------------------
# Kinematics
# --------------------------------------------------------------------------------------------

def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


#: Bone directions of the rest pose in the body frame (x left, y up, z forward); right = mirror.
REST_DIRS = np.zeros((skeleton.NUM_JOINTS, 3))
for _name, _d in {
    "SpineMid": (0, 1, 0), "SpineShoulder": (0, 1, 0), "Neck": (0, 1, 0.08), "Head": (0, 1, 0.1),
    "ShoulderLeft": (1, -0.2, 0), "ElbowLeft": (0, -1, 0), "WristLeft": (0, -1, 0),
    "HandLeft": (0, -1, 0), "HandTipLeft": (0, -1, 0), "ThumbLeft": (-0.35, -0.75, 0.55),
    "HipLeft": (1, -0.5, 0), "KneeLeft": (0, -1, 0), "AnkleLeft": (0, -1, 0),
    "FootLeft": (0, -0.3, 1),
}.items():
    REST_DIRS[skeleton.JOINT[_name]] = _unit(_d)
    if _name.endswith("Left"):
        REST_DIRS[skeleton.JOINT[_name[:-4] + "Right"]] = _unit(_d) * (-1, 1, 1)

_PARENT = np.array([0] + list(skeleton.PARENTS[1:]))
_DEPTH = np.zeros(skeleton.NUM_JOINTS, dtype=int)
for _j in skeleton.TOPO_ORDER[1:]:
    _DEPTH[_j] = _DEPTH[skeleton.PARENTS[_j]] + 1
#: Joints grouped by tree depth: frames are composed one level at a time.
LEVELS = tuple(np.flatnonzero(_DEPTH == d) for d in range(1, _DEPTH.max() + 1))
_MIRROR_CONJ = np.outer([-1.0, 1.0, 1.0], [-1.0, 1.0, 1.0])  # M R M for M = diag(-1, 1, 1)


def _rot(axis: int, a: np.ndarray) -> np.ndarray:
    """Rotations by angles ``a [...]`` (radians) about x (0), y (1) or z (2): ``[..., 3, 3]``."""
    c, s = np.cos(a), np.sin(a)
    r = np.zeros(a.shape + (3, 3))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r[..., axis, axis] = 1.0
    r[..., i, i] = c
    r[..., j, j] = c
    r[..., i, j] = -s
    r[..., j, i] = s
    return r


def local_rotations(angles: np.ndarray) -> np.ndarray:
    """Local bone rotations ``[..., 25, 3, 3]`` of poses ``angles [..., NUM_DOFS]`` (radians).

    Entry 0 is the body facing; every other entry rotates bone ``j`` relative to its parent.
    """
    a = {n: angles[..., i] for i, n in enumerate(DOFS)}
    lead = angles.shape[:-1]
    out = np.broadcast_to(np.eye(3), lead + (skeleton.NUM_JOINTS, 3, 3)).copy()
    J = skeleton.JOINT
    out[..., 0, :, :] = _rot(1, a["yaw"])
    out[..., J["SpineMid"], :, :] = (_rot(0, a["sp_flex"]) @ _rot(2, -a["sp_side"])
                                     @ _rot(1, a["sp_twist"]))
    out[..., J["SpineShoulder"], :, :] = _rot(0, a["ch_flex"])
    out[..., J["Neck"], :, :] = _rot(0, a["nk_flex"])
    out[..., J["Head"], :, :] = _rot(0, a["hd_flex"]) @ _rot(2, -a["hd_roll"])

    def side(name: str) -> np.ndarray:  # [..., 2] (left, right)
        return np.stack([a[f"{name}_L"], a[f"{name}_R"]], -1)

    plane = side("sh_plane")
    limbs = {  # left-side convention, both sides stacked on axis -3
        "Shoulder": _rot(2, side("cl_elev")) @ _rot(1, -side("cl_prot")),
        "Elbow": (_rot(1, plane) @ _rot(0, -side("sh_elev"))
                  @ _rot(1, -plane - side("sh_twist"))),
        "Wrist": _rot(0, -side("el_flex")),
        "Hand": _rot(0, -side("wr_flex")),
        "Knee": _rot(0, -side("hp_flex")) @ _rot(2, side("hp_abd")) @ _rot(1, side("hp_rot")),
        "Ankle": _rot(0, side("kn_flex")),
        "Foot": _rot(0, -side("an_flex")),
    }
    for name, r in limbs.items():
        out[..., J[name + "Left"], :, :] = r[..., 0, :, :]
        out[..., J[name + "Right"], :, :] = r[..., 1, :, :] * _MIRROR_CONJ
    return out


def compose(local: np.ndarray) -> np.ndarray:
    """Global bone frames ``[..., 25, 3, 3]`` from local rotations (root entry = body facing)."""
    frames = local.copy()
    for idx in LEVELS:
        frames[..., idx, :, :] = frames[..., _PARENT[idx], :, :] @ local[..., idx, :, :]
    return frames


def pose_directions(local: np.ndarray) -> np.ndarray:
    """Unit bone directions ``[..., 25, 3]`` (body frame) of local rotations ``[..., 25, 3, 3]``."""
    return (compose(local) * REST_DIRS[:, None, :]).sum(-1)


# --------------------------------------------------------------------------------------------
# Keyframes
# --------------------------------------------------------------------------------------------

def _expand(pose: dict[str, float]) -> dict[str, float]:
    """Resolve ``_D`` (right), ``_N`` (left) and ``_B`` (both) suffixes into DOF names."""
    out: dict[str, float] = {}
    for k, v in pose.items():
        if k.endswith("_D"):
            out[k[:-2] + "_R"] = v
        elif k.endswith("_N"):
            out[k[:-2] + "_L"] = v
        elif k.endswith("_B"):
            out[k[:-2] + "_L"] = out[k[:-2] + "_R"] = v
        elif k in DOF:
            out[k] = v
        else:
            raise KeyError(f"unknown pose DOF {k!r}")
    return out


@dataclass
class Keys:
    """Keyframes being written: times in seconds (neutral tempo), poses in degrees."""

    times: list[float]
    poses: list[dict[str, float]]
    flights: list[tuple[float, float, float]]

    @classmethod
    def start(cls, **pose: float) -> Keys:
        return cls([0.0], [_expand(pose)], [])

    def to(self, dt: float, **pose: float) -> Keys:
        self.times.append(self.times[-1] + dt)
        self.poses.append(_expand(pose))
        return self

    def hold(self, dt: float) -> Keys:
        self.times.append(self.times[-1] + dt)
        self.poses.append(dict(self.poses[-1]))
        return self

    def fly(self, dt: float, height: float, apex: dict[str, float],
            land: dict[str, float]) -> Keys:
        """An airborne phase of ``dt`` s reaching ``height`` (in leg lengths)."""
        t0 = self.times[-1]
        self.to(dt / 2, **apex).to(dt / 2, **land)
        self.flights.append((t0, t0 + dt, height))
        return self

    def array(self) -> np.ndarray:
        v = np.zeros((len(self.poses), NUM_DOFS))
        for i, p in enumerate(self.poses):
            for k, x in p.items():
                v[i, DOF[k]] = x
        return v


def interpolate(times: np.ndarray, values: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Smoothstep interpolation of keyframes ``values [K, D]`` at ``times [K]`` (increasing),
    evaluated at per-DOF query times ``u [T, D]``: returns ``[T, D]``."""
    seg = np.clip(np.searchsorted(times, u, side="right") - 1, 0, len(times) - 2)
    t0, t1 = times[seg], times[seg + 1]
    f = np.clip((u - t0) / np.maximum(t1 - t0, 1e-9), 0.0, 1.0)
    w = f * f * (3.0 - 2.0 * f)
    cols = np.arange(values.shape[1])
    return values[seg, cols] * (1.0 - w) + values[seg + 1, cols] * w


def flat(hp: float, kn: float) -> float:
    """Ankle dorsiflexion that keeps the foot flat for a given hip and knee flexion."""
    return kn - hp


# --------------------------------------------------------------------------------------------
# Actions (right-handed, degrees, seconds at neutral tempo)
# --------------------------------------------------------------------------------------------

ActionFn = Callable[[dict[str, float], int], Keys]


def _wave(p, reps):
    up = dict(sh_elev_D=p["elev"], sh_plane_D=p["plane"], el_flex_D=p["flex"], sh_twist_D=-15)
    k = Keys.start().to(0.5, **up)
    for _ in range(reps):
        k.to(0.22, **{**up, "el_flex_D": p["flex"] + p["swing"], "sh_plane_D": p["plane"] - 10})
        k.to(0.22, **{**up, "el_flex_D": max(p["flex"] - p["swing"], 0), "sh_plane_D":
                      p["plane"] + 8})
    return k.to(0.2, **up).to(0.5)


def _clap(p, reps):
    opened = dict(sh_elev_B=p["elev"], sh_plane_B=30, el_flex_B=p["flex"], sh_twist_B=0)
    closed = dict(sh_elev_B=p["elev"], sh_plane_B=-5, el_flex_B=p["flex"], sh_twist_B=45)
    k = Keys.start().to(0.5, **opened)
    for _ in range(reps):
        k.to(0.17, **closed).to(0.17, **opened)
    return k.to(0.5)


def _drink(p, reps):
    grab = dict(sh_elev_D=25, sh_plane_D=10, el_flex_D=70, sh_twist_D=10)
    mouth = dict(sh_elev_D=p["elev"], sh_plane_D=15, el_flex_D=p["flex"], sh_twist_D=15,
                 wr_flex_D=-15, hd_flex=-p["tilt"], nk_flex=-p["tilt"] / 2)
    k = Keys.start().to(0.45, **grab).to(0.55, **mouth)
    for _ in range(reps):
        k.to(p["hold"] / reps, **{**mouth, "hd_flex": -1.4 * p["tilt"]})
    return k.to(0.5, **grab).to(0.45)


def _eat(p, reps):
    bowl = dict(sh_elev_N=25, sh_plane_N=10, el_flex_N=85, sh_twist_N=35)
    low = dict(bowl, sh_elev_D=20, sh_plane_D=5, el_flex_D=80, sh_twist_D=30)
    mouth = dict(bowl, sh_elev_D=p["elev"], sh_plane_D=20, el_flex_D=p["flex"], sh_twist_D=20,
                 nk_flex=10, hd_flex=5)
    k = Keys.start().to(0.5, **low)
    for _ in range(reps):
        k.to(0.35, **mouth).to(0.35, **low)
    return k.to(0.5)


def _phone_call(p, reps):
    ear = dict(sh_elev_D=p["elev"], sh_plane_D=p["plane"], el_flex_D=p["flex"], sh_twist_D=-10,
               hd_roll=-p["roll"])
    return Keys.start().to(0.7, **ear).hold(p["hold"]).to(0.7)


def _kick(p, reps):
    hp = p["hip"]
    arms = dict(sh_elev_B=20, sh_plane_B=30, el_flex_B=70)
    chamber = dict(arms, hp_flex_D=0.65 * hp, kn_flex_D=85, sp_flex=-4, hp_abd_N=3)
    ext = dict(arms, hp_flex_D=hp, kn_flex_D=5, an_flex_D=-25, sp_flex=-12, hp_abd_N=3)
    k = Keys.start().to(0.45, **chamber)
    for _ in range(reps):
        k.to(0.2, **ext).to(0.25, **chamber)
    return k.to(0.45)


def _punch(p, reps):
    guard = dict(sh_elev_B=35, sh_plane_B=10, el_flex_B=125, sh_twist_B=20)
    hit = dict(guard, sh_elev_D=p["elev"], sh_plane_D=-5, el_flex_D=5, sh_twist_D=0,
               sp_twist=p["twist"])
    k = Keys.start().to(0.5, **guard)
    for _ in range(reps):
        k.to(0.15, **hit).to(0.3, **guard)
    return k.to(0.5)


def _throw(p, reps):
    windup = dict(sh_elev_D=p["elev"], sh_plane_D=110, el_flex_D=90, sp_twist=-p["twist"],
                  sp_flex=-5, sh_elev_N=45, sh_plane_N=20, el_flex_N=20)
    release = dict(sh_elev_D=p["release"], sh_plane_D=0, el_flex_D=10, wr_flex_D=30,
                   sp_twist=0.8 * p["twist"], sp_flex=15, sh_elev_N=10, el_flex_N=30)
    follow = dict(sh_elev_D=40, sh_plane_D=-25, el_flex_D=20, sp_twist=p["twist"], sp_flex=22,
                  el_flex_N=30)
    k = Keys.start().to(0.6, **windup).hold(0.2)
    return k.to(0.18, **release).to(0.25, **follow).to(0.7)


def _seated(p):
    hp, kn = p["hip"], p["knee"]
    return dict(hp_flex_B=hp, kn_flex_B=kn, an_flex_B=flat(hp, kn), hp_abd_B=3, sp_flex=8,
                sh_elev_B=20, sh_plane_B=15, el_flex_B=55, sh_twist_B=25)


def _half_seated(p):
    return dict(hp_flex_B=55, kn_flex_B=65, an_flex_B=flat(55, 65), hp_abd_B=4,
                sp_flex=p["lean"], sh_elev_B=35, sh_plane_B=10, el_flex_B=30)


def _sit_down(p, reps):
    return Keys.start().to(0.7, **_half_seated(p)).to(0.6, **_seated(p)).hold(0.3)


def _stand_up(p, reps):
    return Keys.start(**_seated(p)).hold(0.2).to(0.6, **_half_seated(p)).to(0.7)


def _pick_up(p, reps):
    bend, kn = p["bend"], p["knee"]
    hp = 0.5 * kn
    low = dict(sp_flex=bend, nk_flex=-10, hp_flex_B=hp, kn_flex_B=kn, an_flex_B=flat(hp, kn),
               sh_elev_D=bend + p["reach"], sh_plane_D=10, el_flex_D=10,
               sh_elev_N=0.6 * bend, sh_plane_N=20, el_flex_N=35)
    carry = dict(sh_elev_D=15, sh_plane_D=10, el_flex_D=45, sh_twist_D=20)
    return Keys.start().to(0.8, **low).hold(0.3).to(0.8, **carry).hold(0.2)


def _jump(p, reps):
    crouch = dict(hp_flex_B=50, kn_flex_B=75, an_flex_B=25, sp_flex=25, sh_elev_B=-35,
                  el_flex_B=20)
    takeoff = dict(an_flex_B=-30, sh_elev_B=p["arms"], sh_plane_B=20, el_flex_B=10)
    apex = dict(hp_flex_B=15, kn_flex_B=25, an_flex_B=-20, sh_elev_B=p["arms"] - 10,
                sh_plane_B=25, el_flex_B=15)
    air = 2.0 * np.sqrt(2.0 * p["height"] * 0.85 / 9.81)  # ballistic time for a 0.85 m leg
    k = Keys.start()
    for _ in range(reps):
        k.to(0.45, **crouch).to(0.15, **takeoff)
        k.fly(air, p["height"], apex, takeoff)
        k.to(0.15, **crouch).to(0.4)
    return k


def _bow(p, reps):
    d = p["depth"]
    bow = dict(sp_flex=d, ch_flex=0.2 * d, nk_flex=0.2 * d, sh_elev_B=0.7 * d, sh_plane_B=5,
               el_flex_B=10)
    return Keys.start().to(0.7, **bow).hold(p["hold"]).to(0.7)


def _squat(p, reps):
    hp, kn = p["hip"], p["knee"]
    down = dict(hp_flex_B=hp, kn_flex_B=kn, an_flex_B=flat(hp, kn), hp_abd_B=3, sp_flex=20,
                sh_elev_B=p["arms"], sh_plane_B=5, el_flex_B=10)
    k = Keys.start()
    for _ in range(reps):
        k.to(0.7, **down).hold(0.2).to(0.7)
    return k


def _point(p, reps):
    pt = dict(sh_elev_D=p["elev"], sh_plane_D=p["plane"], el_flex_D=5, wr_flex_D=-10)
    return Keys.start().to(0.6, **pt).hold(p["hold"]).to(0.6)


def _cross_hands(p, reps):
    x = dict(sh_elev_B=p["elev"], sh_plane_B=-35, el_flex_B=p["flex"], sh_twist_B=35)
    return Keys.start().to(0.7, **x).hold(p["hold"]).to(0.7)


def _hand_on_chest(p, reps):
    c = dict(sh_elev_D=25, sh_plane_D=-30, el_flex_D=p["flex"], sh_twist_D=45, nk_flex=5)
    return Keys.start().to(0.7, **c).hold(p["hold"]).to(0.7)


def _brush_hair(p, reps):
    up = dict(sh_elev_D=p["elev"], sh_plane_D=p["plane"], el_flex_D=p["flex"], sh_twist_D=-30,
              hd_roll=6)
    k = Keys.start().to(0.6, **up)
    for _ in range(reps):
        k.to(0.3, **{**up, "sh_elev_D": p["elev"] + 12, "el_flex_D": p["flex"] - 18})
        k.to(0.3, **up)
    return k.to(0.6)


def _gait_pose(hs: str, step: float) -> tuple[dict[str, float], dict[str, float]]:
    """Heel strike of leg ``hs`` ("R" or "L") and the following mid-swing of the other leg."""
    o = "L" if hs == "R" else "R"
    hip = step
    heel = {f"hp_flex_{hs}": hip, f"kn_flex_{hs}": 5, f"an_flex_{hs}": 5,
            f"hp_flex_{o}": -0.5 * hip, f"kn_flex_{o}": 35, f"an_flex_{o}": -15,
            f"sh_elev_{o}": 0.6 * hip, f"sh_elev_{hs}": -0.5 * hip, f"el_flex_{o}": 25,
            f"el_flex_{hs}": 10, "sp_twist": 5 if hs == "R" else -5}
    mid = {f"hp_flex_{hs}": 0.15 * hip, f"kn_flex_{hs}": 12, f"an_flex_{hs}": 0,
           f"hp_flex_{o}": 0.7 * hip, f"kn_flex_{o}": 60, f"an_flex_{o}": 8,
           f"el_flex_{o}": 15, f"el_flex_{hs}": 15}
    return heel, mid


def _walk(p, reps):
    k = Keys.start()
    lead = "R"
    for i in range(reps):
        heel, mid = _gait_pose(lead, p["step"])
        k.to(0.6 if i == 0 else 0.27, **heel).to(0.27, **mid)
        lead = "L" if lead == "R" else "R"
    return k.to(0.5)


def _cheer_up(p, reps):
    up = dict(sh_elev_B=p["elev"], sh_plane_B=p["plane"], el_flex_B=10)
    low = dict(sh_elev_B=p["elev"] - 40, sh_plane_B=p["plane"], el_flex_B=55)
    k = Keys.start().to(0.5, **up)
    for _ in range(reps):
        k.to(0.25, **low).to(0.25, **up)
    return k.to(0.5)


def _salute(p, reps):
    s = dict(sh_elev_D=p["elev"], sh_plane_D=80, el_flex_D=p["flex"], sh_twist_D=-20,
             wr_flex_D=-10)
    return Keys.start().to(0.5, **s).hold(p["hold"]).to(0.6)


def _carry(p, reps):
    """Walking with both hands holding a box in front of the waist (no arm swing)."""
    hold = dict(sh_elev_B=p["elev"], sh_plane_B=10, el_flex_B=p["flex"], sh_twist_B=35,
                sp_flex=-3)
    k = Keys.start().to(0.5, **hold)
    lead = "R"
    for _ in range(reps):
        heel, mid = _gait_pose(lead, p["step"])  # the arms' "_B" keys override the swing
        k.to(0.3, **heel, **hold).to(0.3, **mid, **hold)
        lead = "L" if lead == "R" else "R"
    return k.to(0.4, **hold).to(0.5)


def _push(p, reps):
    """One hand (the dominant) pushes forward from the chest at chest height, weight forward."""
    chest = dict(sh_elev_D=30, sh_plane_D=15, el_flex_D=p["flex"], sh_twist_D=25, wr_flex_D=-30)
    out = dict(sh_elev_D=p["elev"], sh_plane_D=5, el_flex_D=10, sh_twist_D=5, wr_flex_D=-50,
               sp_flex=p["lean"], cl_prot_D=15, hp_flex_D=12, kn_flex_D=10,
               an_flex_D=flat(12, 10))
    k = Keys.start().to(0.5, **chest)
    for _ in range(reps):
        k.to(0.35, **out).hold(0.15).to(0.4, **chest)
    return k.to(0.5)


def _pull(p, reps):
    """One hand (the dominant) reaches forward, grips and pulls back to the chest, weight back."""
    reach = dict(sh_elev_D=p["elev"], sh_plane_D=5, el_flex_D=10, sh_twist_D=5, wr_flex_D=20,
                 sp_flex=6, cl_prot_D=15)
    chest = dict(sh_elev_D=25, sh_plane_D=25, el_flex_D=p["flex"], sh_twist_D=20, wr_flex_D=20,
                 sp_flex=-p["lean"], hp_flex_N=-10, kn_flex_N=8, an_flex_N=flat(-10, 8))
    k = Keys.start().to(0.5, **reach)
    for _ in range(reps):
        k.hold(0.15).to(0.45, **chest).hold(0.15).to(0.35, **reach)
    return k.to(0.5)


@dataclass(frozen=True)
class ActionSpec:
    keys: ActionFn
    params: dict[str, tuple[float, float]]
    reps: tuple[int, int] = (1, 1)
    #: Metres the root travels per repetition (walking); 0 for actions done on the spot.
    travel: float = 0.0


ACTION_SPECS: dict[str, ActionSpec] = {
    "wave": ActionSpec(_wave, dict(elev=(110, 155), plane=(50, 85), flex=(25, 50),
                                   swing=(18, 32)), (3, 6)),
    "clap": ActionSpec(_clap, dict(elev=(45, 75), flex=(60, 90)), (3, 6)),
    "drink": ActionSpec(_drink, dict(elev=(30, 50), flex=(125, 145), tilt=(10, 25),
                                     hold=(0.4, 1.0)), (1, 2)),
    "eat": ActionSpec(_eat, dict(elev=(25, 40), flex=(110, 135)), (2, 4)),
    "phone_call": ActionSpec(_phone_call, dict(elev=(40, 60), plane=(40, 70), flex=(135, 150),
                                               roll=(5, 15), hold=(1.0, 2.0))),
    "kick": ActionSpec(_kick, dict(hip=(60, 90)), (1, 2)),
    "punch": ActionSpec(_punch, dict(elev=(75, 95), twist=(10, 25)), (1, 3)),
    "throw": ActionSpec(_throw, dict(elev=(110, 140), twist=(20, 30), release=(70, 95))),
    "sit_down": ActionSpec(_sit_down, dict(hip=(80, 95), knee=(80, 100), lean=(30, 45))),
    "stand_up": ActionSpec(_stand_up, dict(hip=(80, 95), knee=(80, 100), lean=(30, 45))),
    "pick_up": ActionSpec(_pick_up, dict(bend=(55, 80), knee=(15, 60), reach=(0, 15))),
    "jump": ActionSpec(_jump, dict(height=(0.12, 0.3), arms=(100, 140)), (1, 2)),
    "bow": ActionSpec(_bow, dict(depth=(30, 60), hold=(0.3, 0.8))),
    "squat": ActionSpec(_squat, dict(hip=(85, 110), knee=(100, 125), arms=(60, 90)), (1, 3)),
    "point": ActionSpec(_point, dict(elev=(75, 110), plane=(0, 50), hold=(0.6, 1.5))),
    "cross_hands": ActionSpec(_cross_hands, dict(elev=(35, 55), flex=(100, 125),
                                                 hold=(0.6, 1.5))),
    "hand_on_chest": ActionSpec(_hand_on_chest, dict(flex=(110, 130), hold=(0.6, 1.5))),
    "brush_hair": ActionSpec(_brush_hair, dict(elev=(110, 135), plane=(60, 80),
                                               flex=(120, 140)), (3, 5)),
    "walk_towards": ActionSpec(_walk, dict(step=(25, 35)), (3, 7), travel=0.4),
    "walk_away": ActionSpec(_walk, dict(step=(25, 35)), (3, 7), travel=0.4),
    "cheer_up": ActionSpec(_cheer_up, dict(elev=(140, 170), plane=(40, 80)), (2, 4)),
    "salute": ActionSpec(_salute, dict(elev=(80, 100), flex=(130, 145), hold=(0.5, 1.2))),
}

#: Everyday interactions beyond SynthKinect's action classes: never rendered into a store (its
#: labels are :data:`ACTION_SPECS`), but the dummy can perform them, so a motion-matching
#: database may hold them (``database.interactions`` in configs/motion_match.yaml).
INTERACTION_SPECS: dict[str, ActionSpec] = {
    "carry": ActionSpec(_carry, dict(step=(20, 30), elev=(20, 35), flex=(75, 100)), (3, 7),
                        travel=0.35),
    "push": ActionSpec(_push, dict(elev=(65, 85), flex=(110, 130), lean=(5, 12)), (1, 2)),
    "pull": ActionSpec(_pull, dict(elev=(65, 85), flex=(100, 125), lean=(4, 10)), (1, 2)),
}
#: Every motion the dummy can perform: the action classes, then the interactions.
MOTION_SPECS: dict[str, ActionSpec] = {**ACTION_SPECS, **INTERACTION_SPECS}
