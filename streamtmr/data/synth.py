"""SynthKinect: synthetic Kinect v2 recordings with known identity, content and ground truth.

A recording is ``render(content, identity)``:

* **identity** (:class:`Identity`) is who moves: a body (24 bone lengths from stature, sex and
  individual proportions) and a motion style (tempo, amplitude, posture, arm carry, handedness,
  per-joint phase habits, idle sway, tremor) that persists across every action of a person.
* **content** (:class:`Content`) is what is done: one of :data:`ACTIONS` with its instance
  parameters (duration, targets, repetitions, speed profile, facing, start position).

Motion is built from joint-angle keyframes (:mod:`streamtmr.data.synth_motion`) blended with
the style, turned into joints by :func:`streamtmr.skeleton.forward_kinematics`, placed on the
floor (feet anchored while they carry weight) and seen by a Kinect-like camera with a sensor
noise model. Because ``render`` works for any identity, the exact retarget of every recording
onto a dummy is known: the same content performed by :func:`neutral_identity` (dummy bones,
style removed) from the same camera. See ``docs/synthkinect.md``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from streamtmr import skeleton
from streamtmr.data import synth_motion as sm
from streamtmr.data.store import StoreWriter
from streamtmr.dummy import Dummy, default_dummy

FPS = 30
SYNTH_VERSION = 1
ACTIONS: tuple[str, ...] = tuple(sm.ACTION_SPECS)
SEX_NAMES = ("female", "male")
AGE_GROUPS = ("young", "adult", "senior")
#: Height of the lowest foot joint above the floor when a foot is on the ground (Kinect's ankle
#: and foot joints sit a few centimetres above the floor).
FLOOR_CLEARANCE = 0.04
#: Store arrays written by :func:`generate` (frame shapes).
ARRAYS = {"joints": (25, 3), "clean": (25, 3), "target": (25, 3), "target_sync": (25, 3),
          "state": (25,)}

# --------------------------------------------------------------------------------------------
# Bodies
# --------------------------------------------------------------------------------------------

#: Reference bone lengths (m) of a 1.70 m adult: medians of real NTU RGB+D recordings.
_REF_BONES = {"SpineMid": 0.262, "SpineShoulder": 0.194, "Neck": 0.064, "Head": 0.127,
              "Shoulder": 0.145, "Elbow": 0.228, "Wrist": 0.231, "Hand": 0.062,
              "HandTip": 0.057, "Thumb": 0.081, "Hip": 0.069, "Knee": 0.337, "Ankle": 0.346,
              "Foot": 0.127}
REF_HEIGHT = 1.70
#: Proportion groups: (bones, male − female log-ratio, individual log-sd).
_GROUPS = (
    (("SpineMid", "SpineShoulder"), -0.02, 0.03),
    (("Neck", "Head"), -0.03, 0.05),
    (("Shoulder",), 0.12, 0.05),
    (("Elbow",), 0.01, 0.03),
    (("Wrist",), 0.04, 0.03),
    (("Hand", "HandTip", "Thumb"), 0.06, 0.06),
    (("Hip",), -0.12, 0.06),
    (("Knee",), -0.01, 0.03),
    (("Ankle",), 0.01, 0.03),
    (("Foot",), 0.05, 0.04),
)
_ASYMMETRY_SD = 0.012


def _bone_index(base: str) -> list[int]:
    if base in skeleton.JOINT:
        return [skeleton.JOINT[base]]
    return [skeleton.JOINT[base + "Left"], skeleton.JOINT[base + "Right"]]


REF_LENGTHS = np.zeros(skeleton.NUM_JOINTS)
for _b, _v in _REF_BONES.items():
    REF_LENGTHS[_bone_index(_b)] = _v
#: Standing height / (ankle→head joint chain) ratio, from the reference body.
CHAIN_RATIO = float(skeleton.standing_height(REF_LENGTHS)) / REF_HEIGHT
_LEFT_BONES = np.array(skeleton.LEFT)
_RIGHT_BONES = np.array(skeleton.RIGHT)


def sample_body(sex: int, age_group: int, rng: np.random.Generator) -> tuple[float, np.ndarray]:
    """Stature (m) and bone lengths ``float32 [25]`` of one person."""
    mean, sd = (1.76, 0.07) if sex == 1 else (1.63, 0.065)
    height = float(np.clip(rng.normal(mean - (0.02 if age_group == 2 else 0.0), sd), 1.45, 2.0))
    sign = 1.0 if sex == 1 else -1.0
    log = np.zeros(skeleton.NUM_JOINTS)
    for bones, sexdiff, ind in _GROUPS:
        g = sign * sexdiff / 2 + rng.normal(0.0, ind)
        for b in bones:
            log[_bone_index(b)] = g
    log += rng.normal(0.0, _ASYMMETRY_SD, skeleton.NUM_JOINTS)
    lengths = REF_LENGTHS * np.exp(log)
    lengths *= height * CHAIN_RATIO / skeleton.standing_height(lengths)
    lengths[skeleton.ROOT] = 0.0
    return height, lengths.astype(np.float32)


def symmetrize(lengths: np.ndarray) -> np.ndarray:
    """Average left and right bones: ``[..., 25]``."""
    out = np.array(lengths, dtype=np.float32, copy=True)
    mean = (out[..., _LEFT_BONES] + out[..., _RIGHT_BONES]) / 2
    out[..., _LEFT_BONES] = mean
    out[..., _RIGHT_BONES] = mean
    return out


# --------------------------------------------------------------------------------------------
# Identity and content
# --------------------------------------------------------------------------------------------

def _zeros() -> np.ndarray:
    return np.zeros(sm.NUM_DOFS, np.float32)


def _ones() -> np.ndarray:
    return np.ones(sm.NUM_DOFS, np.float32)


#: Population means of the posture fields: the neutral style.
NEUTRAL_POSTURE = dict(lean=3.0, stoop=4.0, side_lean=0.0, arm_carry=9.0, elbow_carry=12.0,
                       stance_width=3.5, toe_out=9.0, knee_bend=3.0)


@dataclass
class Identity:
    """Who moves: labels, body and motion style. Angles in degrees, times in seconds.

    ``sex`` 0 female / 1 male, ``age_group`` 0 young / 1 adult / 2 senior (-1 for the dummy).
    ``habit``, ``amp_habit`` and ``phase_lag`` are per-DOF (:data:`synth_motion.DOFS`) posture
    offsets, amplitude factors and delays: the person's individual way of moving each joint.
    """

    subject: int
    sex: int
    age_group: int
    height: float
    lengths: np.ndarray
    tempo: float = 1.0
    amplitude: float = 1.0
    lean: float = NEUTRAL_POSTURE["lean"]
    stoop: float = NEUTRAL_POSTURE["stoop"]
    side_lean: float = NEUTRAL_POSTURE["side_lean"]
    arm_carry: float = NEUTRAL_POSTURE["arm_carry"]
    elbow_carry: float = NEUTRAL_POSTURE["elbow_carry"]
    stance_width: float = NEUTRAL_POSTURE["stance_width"]
    toe_out: float = NEUTRAL_POSTURE["toe_out"]
    knee_bend: float = NEUTRAL_POSTURE["knee_bend"]
    left_handed: bool = False
    dominance: float = 1.0
    sway_amp: float = 0.0
    sway_freq: float = 0.3
    tremor_amp: float = 0.0
    tremor_freq: float = 6.0
    habit: np.ndarray = field(default_factory=_zeros)
    amp_habit: np.ndarray = field(default_factory=_ones)
    phase_lag: np.ndarray = field(default_factory=_zeros)

    def rest_pose(self) -> np.ndarray:
        """The person's habitual standing posture, ``[NUM_DOFS]`` degrees."""
        p = np.zeros(sm.NUM_DOFS)
        d = sm.DOF
        p[d["sp_flex"]], p[d["sp_side"]] = self.lean, self.side_lean
        p[d["ch_flex"]], p[d["nk_flex"]], p[d["hd_flex"]] = (self.stoop, 0.7 * self.stoop,
                                                             -0.3 * self.stoop)
        for s in "LR":
            p[d[f"sh_elev_{s}"]], p[d[f"sh_plane_{s}"]] = self.arm_carry, 60.0
            p[d[f"sh_twist_{s}"]], p[d[f"el_flex_{s}"]] = 10.0, self.elbow_carry
            p[d[f"wr_flex_{s}"]], p[d[f"hp_abd_{s}"]] = 5.0, self.stance_width
            p[d[f"hp_rot_{s}"]], p[d[f"kn_flex_{s}"]] = self.toe_out, self.knee_bend
            p[d[f"an_flex_{s}"]] = self.knee_bend
        return p + self.habit

    def amplitudes(self) -> np.ndarray:
        """Per-DOF factor on action motion ``[NUM_DOFS]`` (directions are never scaled)."""
        a = self.amplitude * self.amp_habit.astype(np.float64)
        dom = "L" if self.left_handed else "R"
        for n in ("sh_elev", "el_flex", "wr_flex", "sh_twist"):
            a[sm.DOF[f"{n}_{dom}"]] *= self.dominance
        for n in sm.UNSCALED:
            a[sm.DOF[n]] = 1.0
        return a


@dataclass
class Content:
    """What is done: an action instance. Times in seconds, angles in degrees, positions in m.

    ``side`` is the hand/foot that performs one-sided actions ("right"/"left"); ``yaw`` the
    facing offset from the world's +z; ``start`` the root's (x, z) on the floor at frame 0;
    ``speed`` scales the keyframe timeline and ``warp`` bends it (smooth speed variation);
    ``seed`` draws the per-instance keyframe perturbations.
    """

    action: str
    n_frames: int
    onset: float
    speed: float
    warp: tuple[float, float]
    yaw: float
    start: tuple[float, float]
    side: str
    reps: int
    params: dict[str, float]
    seed: int

    @property
    def duration(self) -> float:
        return self.n_frames / FPS


@dataclass(frozen=True)
class Camera:
    """A Kinect v2 at ``distance`` m from the start point, ``height`` m above the floor, at
    azimuth ``view_deg`` from the subject's facing (positive: towards the subject's left),
    pitched down by ``tilt_deg``."""

    view_deg: float = 0.0
    distance: float = 3.0
    height: float = 1.0
    tilt_deg: float = 0.0

    def pose(self) -> tuple[np.ndarray, np.ndarray]:
        """World→camera rotation rows ``[3, 3]`` (X left, Y up, Z forward) and position."""
        th, ti = math.radians(self.view_deg), math.radians(self.tilt_deg)
        pos = np.array([self.distance * math.sin(th), self.height, self.distance * math.cos(th)])
        f0 = np.array([-math.sin(th), 0.0, -math.cos(th)])
        up = np.array([0.0, 1.0, 0.0])
        left = np.cross(up, f0)
        fwd = math.cos(ti) * f0 - math.sin(ti) * up
        up_c = math.cos(ti) * up + math.sin(ti) * f0
        return np.stack([left, up_c, fwd]), pos

    def project(self, world: np.ndarray) -> np.ndarray:
        """World points ``[..., 3]`` → Kinect camera space."""
        rot, pos = self.pose()
        return (world - pos) @ rot.T


def _habit_sd() -> np.ndarray:
    sd = np.full(sm.NUM_DOFS, 3.0)
    for n, v in {"yaw": 0.0, "sp_flex": 2.0, "sp_side": 1.0, "sp_twist": 2.0, "ch_flex": 2.0,
                 "nk_flex": 3.0, "hd_flex": 3.0, "hd_roll": 2.0}.items():
        sd[sm.DOF[n]] = v
    for s in "LR":
        sd[sm.DOF[f"sh_plane_{s}"]] = 12.0
        sd[sm.DOF[f"sh_twist_{s}"]] = 8.0
        sd[sm.DOF[f"an_flex_{s}"]] = 2.0
    return sd


HABIT_SD = _habit_sd()


def sample_identity(subject: int, rng: np.random.Generator, style_scale: float = 1.0) -> Identity:
    """One random person. ``style_scale`` scales every deviation from the neutral style."""
    sex = int(rng.integers(2))
    age = int(rng.choice(3, p=[0.35, 0.45, 0.2]))
    height, lengths = sample_body(sex, age, rng)
    male, senior, young = float(sex == 1), float(age == 2), float(age == 0)
    k = style_scale
    n = NEUTRAL_POSTURE

    def dev(mean: float, sd: float) -> float:
        return float(mean + k * rng.normal(0.0, sd))

    lag = rng.normal(0.0, 0.03, sm.NUM_DOFS)
    fluid = rng.uniform(0.0, 1.0)
    for s in "LR":
        lag[sm.DOF[f"el_flex_{s}"]] += 0.04 * fluid
        lag[sm.DOF[f"wr_flex_{s}"]] += 0.08 * fluid
    lag[sm.DOF["yaw"]] = 0.0
    amp_habit = np.exp(k * rng.normal(0.0, 0.1, sm.NUM_DOFS))
    tempo_age = (1.08, 1.0, 0.85)[age]
    return Identity(
        subject=subject, sex=sex, age_group=age, height=height, lengths=lengths,
        tempo=float(np.clip(tempo_age * np.exp(k * rng.normal(0.0, 0.1)), 0.7, 1.35)),
        amplitude=float(np.clip((0.92 if age == 2 else 1.0) * np.exp(k * rng.normal(0, 0.1)),
                                0.75, 1.3)),
        lean=dev(n["lean"] + 3 * senior - young, 3.0),
        stoop=dev(n["stoop"] + 8 * senior - 1.5 * young, 4.0),
        side_lean=dev(0.0, 1.5),
        arm_carry=dev(n["arm_carry"] + 3 * male - 1.5, 3.0),
        elbow_carry=dev(n["elbow_carry"], 5.0),
        stance_width=dev(n["stance_width"] + 1.5 * male - 0.75, 1.5),
        toe_out=dev(n["toe_out"] + 2 * male - 1, 5.0),
        knee_bend=float(n["knee_bend"] - 1.0 + 5 * senior + k * abs(rng.normal(0, 2.0))),
        left_handed=bool(rng.random() < 0.12),
        dominance=float(np.exp(k * rng.normal(0.05, 0.05))),
        sway_amp=float(k * (rng.uniform(0.3, 1.8) + 0.8 * senior)),
        sway_freq=float(rng.uniform(0.15, 0.45)),
        tremor_amp=float(k * (rng.uniform(0.1, 0.6) + 1.2 * senior * rng.random())),
        tremor_freq=float(rng.uniform(4.0, 8.0)),
        habit=(k * rng.normal(0.0, HABIT_SD)).astype(np.float32),
        amp_habit=amp_habit.astype(np.float32),
        phase_lag=(k * lag).astype(np.float32),
    )


def sample_population(n_subjects: int, seed: int = 0) -> list[Identity]:
    """``n_subjects`` people with subject ids ``0..n-1``. Person ``i`` depends only on
    ``(seed, i)``, so a larger population extends a smaller one."""
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    return [sample_identity(i, np.random.default_rng([seed, i, 0x5EED])) for i in range(n_subjects)]


def neutral_identity(lengths: np.ndarray, subject: int = -1) -> Identity:
    """A body with the given bone lengths moving in the neutral style (the dummy)."""
    lengths = np.asarray(lengths, dtype=np.float32).copy()
    if lengths.shape != (skeleton.NUM_JOINTS,):
        raise ValueError(f"expected 25 bone lengths, got shape {lengths.shape}")
    height = float(skeleton.standing_height(lengths)) / CHAIN_RATIO
    return Identity(subject=subject, sex=-1, age_group=-1, height=height, lengths=lengths)


def sample_content(action: str, rng: np.random.Generator, side: str | None = None) -> Content:
    """A random instance of ``action`` (2–5 s at 30 Hz). ``side`` fixes the acting hand/foot;
    by default it is drawn from the population's handedness (88 % right)."""
    if action not in sm.MOTION_SPECS:
        raise ValueError(f"unknown action {action!r}; choose from {', '.join(sm.MOTION_SPECS)}")
    spec = sm.MOTION_SPECS[action]
    params = {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in spec.params.items()}
    reps = int(rng.integers(spec.reps[0], spec.reps[1] + 1))
    speed = float(rng.uniform(0.85, 1.15))
    onset = float(rng.uniform(0.1, 0.5))
    span = spec.keys(params, reps).times[-1] / speed
    duration = float(np.clip(onset + 1.15 * span + rng.uniform(0.2, 0.6), 2.0, 5.0))
    yaw = float(rng.normal(0.0, 6.0))
    start = (0.0, 0.0)
    if spec.travel:
        travel = 0.5 * spec.travel * reps  # half the path
        if action == "walk_away":
            yaw += 180.0
            start = (0.0, travel)
        else:
            start = (0.0, -travel)
    if side is None:
        side = "right" if rng.random() < 0.88 else "left"
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    return Content(action=action, n_frames=int(round(duration * FPS)), onset=onset, speed=speed,
                   warp=(float(rng.uniform(-0.25, 0.25)), float(rng.uniform(-0.15, 0.15))),
                   yaw=yaw, start=start, side=side, reps=reps, params=params,
                   seed=int(rng.integers(2**31)))


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

def _keyframes(content: Content) -> tuple[np.ndarray, np.ndarray, list, float]:
    """Normalised key times ``[K]``, perturbed key poses ``[K, D]`` (degrees), flights and the
    timeline's length in seconds at neutral tempo."""
    keys = sm.MOTION_SPECS[content.action].keys(content.params, content.reps)
    values = keys.array()
    rng = np.random.default_rng(content.seed)
    moving = values != 0
    values = values + moving * (values * rng.normal(0, 0.06, values.shape)
                                + rng.normal(0, 2.0, values.shape))
    if content.side == "left":
        values = sm.mirror_pose(values)
    total = keys.times[-1]
    flights = [(a / total, b / total, h) for a, b, h in keys.flights]
    return np.asarray(keys.times) / total, values, flights, total


def _phase(t: np.ndarray, onset: float, span: float, warp: tuple[float, float]) -> np.ndarray:
    u = np.clip((t - onset) / span, 0.0, 1.0)
    a, b = warp
    return u + a * np.sin(2 * np.pi * u) / (2 * np.pi) + b * np.sin(4 * np.pi * u) / (4 * np.pi)


def _oscillators(content: Content, identity: Identity, t: np.ndarray) -> np.ndarray:
    """Idle sway and tremor ``[T, D]`` (degrees); phases belong to the instance."""
    out = np.zeros((len(t), sm.NUM_DOFS))
    if identity.sway_amp == 0 and identity.tremor_amp == 0:
        return out
    ph = np.random.default_rng([content.seed, 1]).uniform(0, 2 * np.pi, 4)
    f = identity.sway_freq
    sway = identity.sway_amp * (np.sin(2 * np.pi * f * t + ph[0])
                                + 0.5 * np.sin(2 * np.pi * 1.7 * f * t + ph[1]))
    d = sm.DOF
    out[:, d["sp_side"]] = 0.6 * sway
    out[:, d["hp_abd_L"]], out[:, d["hp_abd_R"]] = -sway, sway
    out[:, d["sp_flex"]] = 0.4 * identity.sway_amp * np.sin(2 * np.pi * 0.8 * f * t + ph[2])
    trem = identity.tremor_amp * np.sin(2 * np.pi * identity.tremor_freq * t + ph[3]) * (
        0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t + ph[0]))
    for n, w in (("wr_flex", 1.0), ("el_flex", 0.5)):
        out[:, d[f"{n}_L"]] += w * trem
        out[:, d[f"{n}_R"]] -= w * trem
    out[:, d["hd_flex"]] += 0.5 * trem
    return out


def world_motion(content: Content, identity: Identity) -> np.ndarray:
    """Joints ``float64 [T, 25, 3]`` in world space (metres; floor y = 0; the subject starts at
    ``content.start`` facing +z rotated by ``content.yaw``). No sensor noise."""
    T = content.n_frames
    t = np.arange(T) / FPS
    key_t, key_v, flights, total = _keyframes(content)
    span = min(total / (content.speed * identity.tempo), content.duration - content.onset - 1 / FPS)
    lag = identity.phase_lag.astype(np.float64)
    u = _phase(t[:, None] - lag[None, :], content.onset, span, content.warp)
    angles = sm.interpolate(key_t, key_v, u) * identity.amplitudes()
    angles += _oscillators(content, identity, t)
    angles[:, sm.DOF["yaw"]] += content.yaw
    local = sm.local_rotations(np.radians(angles))
    rest = sm.local_rotations(np.radians(identity.rest_pose()))
    dirs = sm.pose_directions(rest[None] @ local)
    lengths = identity.lengths.astype(np.float64)
    joints = skeleton.forward_kinematics(np.zeros((T, 3)), dirs, lengths)

    lift = np.zeros(T)
    if flights:
        u0 = _phase(t, content.onset, span, content.warp)
        leg = float(skeleton.leg_length(lengths))
        for a, b, h in flights:
            f = np.clip((u0 - a) / (b - a), 0.0, 1.0)
            lift += 4.0 * h * leg * f * (1.0 - f)
    # Feet carry the weight in proportion to how low they are: the root moves so that the
    # weighted foot displacement is zero (no foot skate), except while airborne.
    feet = joints[:, list(skeleton.FEET), 1].reshape(T, 2, 2).min(-1)  # [T, side]
    load = np.exp(-(feet - feet.min(-1, keepdims=True)) / 0.01)
    load /= load.sum(-1, keepdims=True)
    toes = joints[:, [skeleton.JOINT["FootLeft"], skeleton.JOINT["FootRight"]]][..., [0, 2]]
    step = (np.diff(toes, axis=0) * load[1:, :, None]).sum(1)
    step[lift[1:] > 0] = 0.0
    xz = np.asarray(content.start, dtype=np.float64) - np.concatenate(
        [np.zeros((1, 2)), np.cumsum(step, 0)])
    root = np.stack([xz[:, 0], FLOOR_CLEARANCE - feet.min(-1) + lift, xz[:, 1]], -1)
    return joints + root[:, None, :]


#: Per-joint sensor jitter (m, at 3 m): torso, limbs, extremities, hand tips and thumbs.
_JITTER = np.full(skeleton.NUM_JOINTS, 0.0035)
_JITTER[[skeleton.JOINT[n] for n in ("ElbowLeft", "ElbowRight", "KneeLeft", "KneeRight",
                                      "ShoulderLeft", "ShoulderRight", "Head")]] = 0.0045
_JITTER[[skeleton.JOINT[n] for n in ("WristLeft", "WristRight", "HandLeft", "HandRight",
                                      "AnkleLeft", "AnkleRight", "FootLeft", "FootRight")]] = 0.007
_JITTER[[skeleton.JOINT[n] for n in ("HandTipLeft", "HandTipRight", "ThumbLeft",
                                      "ThumbRight")]] = 0.018
#: Joint groups that Kinect loses together (hands and feet), left side first.
_OCCLUSION_GROUPS = (
    [skeleton.JOINT[n] for n in ("WristLeft", "HandLeft", "HandTipLeft", "ThumbLeft")],
    [skeleton.JOINT[n] for n in ("WristRight", "HandRight", "HandTipRight", "ThumbRight")],
    [skeleton.JOINT[n] for n in ("AnkleLeft", "FootLeft")],
    [skeleton.JOINT[n] for n in ("AnkleRight", "FootRight")],
)
_SPIKE_JOINTS = np.array(sum(_OCCLUSION_GROUPS, []) + [skeleton.JOINT[n] for n in (
    "ElbowLeft", "ElbowRight", "KneeLeft", "KneeRight", "Head")])


def sensor_model(clean: np.ndarray, rng: np.random.Generator,
                 view_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Kinect-like observation of camera-space joints ``[T, 25, 3]``.

    Temporally correlated jitter of a few mm (growing with depth, larger along Z and at the
    extremities), hand/foot occlusions (runs of frames marked inferred, state 1, with an offset
    and extra noise; more often on the side turned away from the camera) and occasional spikes
    (single joints thrown 5–25 cm for 1–2 frames, still marked tracked). Returns
    ``(float32 joints, uint8 state)``.
    """
    T = clean.shape[0]
    depth = np.clip(clean[..., 2:3] / 3.0, 0.6, 1.6)
    sigma = _JITTER[:, None] * depth * np.array([1.0, 1.0, 1.5])
    w = rng.normal(size=(T + 2, skeleton.NUM_JOINTS, 3))
    e = (0.7 * w[1:-1] + 0.35 * (w[:-2] + w[2:])) / math.sqrt(0.735)
    noisy = clean + sigma * e
    state = np.full((T, skeleton.NUM_JOINTS), 2, np.uint8)

    far = 1 if view_deg > 10 else 0 if view_deg < -10 else -1  # side facing away (L=0, R=1)
    for g, joints in enumerate(_OCCLUSION_GROUPS):
        rate = (0.08 if g < 2 else 0.12) * (3.0 if g % 2 == far else 1.0)
        for _ in range(rng.poisson(rate * T / FPS)):
            n = min(int(rng.integers(6, 31)), T)
            s = int(rng.integers(0, T - n + 1))
            state[s:s + n, joints] = 1
            noisy[s:s + n, joints] += (rng.normal(0.0, 0.025, 3)
                                       + rng.normal(0.0, 0.01, (n, len(joints), 3)))
    for _ in range(rng.poisson(0.4)):
        j = int(rng.choice(_SPIKE_JOINTS))
        s = int(rng.integers(0, T))
        v = rng.normal(size=3)
        noisy[s:s + int(rng.integers(1, 3)), j] += v / np.linalg.norm(v) * rng.uniform(0.05, 0.25)
    return noisy.astype(np.float32), state


def render(content: Content, identity: Identity, *, view_deg: float = 0.0, distance: float = 3.0,
           camera: Camera | None = None, rng: np.random.Generator | None = None,
           sensor_noise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``content`` performed by ``identity`` seen by a Kinect v2.

    ``camera`` (default ``Camera(view_deg, distance)``) places the sensor; ``rng`` draws the
    sensor noise (default: a fixed seed, so renders are reproducible). Returns camera-space
    joints ``float32 [T, 25, 3]`` and tracking states ``uint8 [T, 25]`` (2 tracked,
    1 inferred); without sensor noise every joint is tracked.
    """
    camera = camera if camera is not None else Camera(view_deg=view_deg, distance=distance)
    clean = camera.project(world_motion(content, identity))
    if not sensor_noise:
        return clean.astype(np.float32), np.full(clean.shape[:2], 2, np.uint8)
    rng = rng if rng is not None else np.random.default_rng(0)
    return sensor_model(clean, rng, camera.view_deg)


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------

def make_splits(subjects: Sequence[int], seed: int = 0) -> dict[str, list[int]]:
    """Disjoint subject splits: 2/3 ``anonymizer_train``, 1/3 ``eval`` (drawn by ``seed``)."""
    subjects = [int(s) for s in subjects]
    if len(subjects) < 2:
        raise ValueError("need at least 2 subjects to split into anonymizer_train and eval")
    perm = np.random.default_rng([seed, 0x5B17]).permutation(subjects)
    n_train = int(np.clip(round(2 * len(subjects) / 3), 1, len(subjects) - 1))
    return {"anonymizer_train": sorted(int(s) for s in perm[:n_train]),
            "eval": sorted(int(s) for s in perm[n_train:])}


def sample_cameras(views: Sequence[float], rng: np.random.Generator,
                   action: str = "") -> list[Camera]:
    """NTU-like rig: cameras at one height (0.8–1.2 m) around the start point, 2–4.5 m away
    (3.2–4.5 m for walking, which travels up to 2 m), each with a small downward tilt."""
    height = float(rng.uniform(0.8, 1.2))
    walks = action in sm.MOTION_SPECS and sm.MOTION_SPECS[action].travel > 0
    base = float(rng.uniform(3.2, 4.5) if walks else rng.uniform(2.0, 4.5))
    return [Camera(view_deg=float(v), height=height, tilt_deg=float(rng.uniform(-2.0, 8.0)),
                   distance=float(np.clip(base + rng.uniform(-0.2, 0.2), 2.0, 4.5)))
            for v in views]


def plan_performance(person: Identity, action_index: int, rep: int, views: Sequence[float],
                     seed: int = 0) -> tuple[Content, list[Camera], np.random.Generator]:
    """The content and cameras of one performance in :func:`generate` (and the generator that
    then draws its sensor noise). The acting side follows the person's handedness 90 % of the
    time; the rest depends only on ``(seed, subject, action_index, rep)``."""
    rng = np.random.default_rng([seed, person.subject, action_index, rep, 1])
    left = person.left_handed == (rng.random() < 0.9)
    content = sample_content(ACTIONS[action_index], rng, side="left" if left else "right")
    return content, sample_cameras(views, rng, content.action), rng


def neutral_performances(subjects: Sequence[int], *, n_subjects: int = 60, seed: int = 0,
                         views: Sequence[float] = (-45, 0, 45), view: int = 1, rep: int = 0,
                         n_actions: int | None = None,
                         dummy_lengths: Sequence[float] | None = None) -> list[np.ndarray]:
    """The ``target`` arrays that :func:`generate` (same ``n_subjects``, ``seed``, ``views``)
    writes for ``subjects``, camera ``view`` (an index of ``views``), repetition ``rep``, every
    action, rendered again without a store: the dummy performing those people's content in the
    neutral style and tempo (nothing of the people's bodies or style), in store row order
    (subject, then action). ``float32 [T, 25, 3]`` each."""
    n_actions = len(ACTIONS) if n_actions is None else int(n_actions)
    if not 1 <= n_actions <= len(ACTIONS):
        raise ValueError(f"n_actions must be in 1..{len(ACTIONS)}, got {n_actions}")
    if not 1 <= len(views) <= 16:
        raise ValueError(f"need 1..16 views, got {len(views)}")
    people = {p.subject: p for p in sample_population(n_subjects, seed)}
    unknown = sorted(set(int(s) for s in subjects) - set(people))
    if unknown:
        raise ValueError(f"subjects {unknown} are not in a population of {n_subjects}")
    if not 0 <= int(view) < len(views):
        raise ValueError(f"view {view} is not an index of views {list(views)}")
    lengths = default_dummy().lengths if dummy_lengths is None else dummy_lengths
    body = neutral_identity(np.asarray(lengths, np.float32))
    out = []
    for s in subjects:
        for a in range(n_actions):
            content, cameras, _ = plan_performance(people[int(s)], a, int(rep), views, seed)
            out.append(cameras[int(view)].project(world_motion(content, body)).astype(np.float32))
    return out


def performances(subjects: Sequence[int], actions: Sequence[str], *, n_subjects: int = 60,
                 seed: int = 0, views: Sequence[float] = (-45, 0, 45), reps: int = 2,
                 target_lengths: Sequence[float] | None = None
                 ) -> tuple[list[np.ndarray], list[str]] | tuple[list[np.ndarray], list[str],
                                                                list[np.ndarray]]:
    """People of the population ``(n_subjects, seed)`` performing named actions, recorded as
    :func:`generate` records a performance (acting side by handedness, an NTU-like camera rig,
    sensor noise), including motions the store's classes lack (``carry``, ...): observed
    joints ``float32 [T, 25, 3]`` of every subject, action, repetition and camera, and each
    clip's action name. Each performance depends only on ``(seed, subject, action, rep)``.

    With ``target_lengths`` (a dummy's bone lengths) also each clip's own-tempo neutral
    performance, as a store's ``target_sync``: the same content by that dummy, neutral style,
    the person's tempo, seen by the same camera without noise, frame-aligned with the clip."""
    people = {p.subject: p for p in sample_population(n_subjects, seed)}
    unknown = sorted(set(int(s) for s in subjects) - set(people))
    if unknown:
        raise ValueError(f"subjects {unknown} are not in a population of {n_subjects}")
    body = (None if target_lengths is None else
            neutral_identity(np.asarray(target_lengths, np.float32)))
    clips, names, targets = [], [], []
    for s in subjects:
        person = people[int(s)]
        for action in actions:
            for rep in range(int(reps)):
                rng = np.random.default_rng([seed, person.subject, zlib.crc32(action.encode()),
                                             rep, 2])
                left = person.left_handed == (rng.random() < 0.9)
                content = sample_content(action, rng, side="left" if left else "right")
                motion = world_motion(content, person)
                sync = (None if body is None else
                        world_motion(content, replace(body, tempo=person.tempo)))
                for cam in sample_cameras(views, rng, content.action):
                    clips.append(sensor_model(cam.project(motion), rng, cam.view_deg)[0])
                    names.append(action)
                    if sync is not None:
                        targets.append(cam.project(sync).astype(np.float32))
    return (clips, names) if body is None else (clips, names, targets)


def generate(out_dir: str | Path, n_subjects: int = 60, n_actions: int | None = None,
             views: Sequence[float] = (-45, 0, 45), reps: int = 2, seed: int = 0,
             progress: bool = True, overwrite: bool = False, dummy: Dummy | None = None) -> Path:
    """Write a SynthKinect store and return its path.

    Every subject performs the first ``n_actions`` actions (all by default) ``reps`` times; each
    performance is seen by every camera in ``views``. Arrays: ``joints`` (observed, with sensor
    noise), ``clean`` (no sensor noise), ``target`` (same content on ``dummy``, neutral style,
    no noise), ``target_sync`` (the same, but at the person's own tempo: frame-aligned with the
    source, the target a causal streaming anonymizer can reach), ``state`` (tracking state as
    float). Index columns: subject, action (index in
    :data:`ACTIONS`), view (index in ``views``), rep, sex, age_group and the camera's distance,
    height and tilt.
    """
    n_actions = len(ACTIONS) if n_actions is None else int(n_actions)
    if not 1 <= n_actions <= len(ACTIONS):
        raise ValueError(f"n_actions must be in 1..{len(ACTIONS)}, got {n_actions}")
    if reps < 1 or not views:
        raise ValueError("need reps >= 1 and at least one view")
    people = sample_population(n_subjects, seed)
    splits = make_splits([p.subject for p in people], seed)
    dummy = dummy if dummy is not None else default_dummy()
    target_body = neutral_identity(dummy.lengths)
    meta = {
        "name": "synthkinect", "skeleton": "kinect_v2", "fps": FPS, "units": "m",
        "actions": list(ACTIONS[:n_actions]), "views_deg": [float(v) for v in views],
        "labels": {"sex": list(SEX_NAMES), "age_group": list(AGE_GROUPS)},
        "dummy": {"name": dummy.name, "lengths": [round(float(x), 6) for x in dummy.lengths]},
        "splits": splits,
        "info": {"generator": "streamtmr.data.synth", "version": SYNTH_VERSION, "seed": seed,
                 "subjects": n_subjects, "reps": reps},
    }
    jobs = [(p, a, r) for p in people for a in range(n_actions) for r in range(reps)]
    with StoreWriter(out_dir, ARRAYS, meta, overwrite=overwrite) as writer:
        for person, a, rep in _progress(jobs, progress, "SynthKinect"):
            content, cameras, rng = plan_performance(person, a, rep, views, seed)
            source = world_motion(content, person)
            target = world_motion(content, target_body)
            # Tempo is the one part of style a streaming anonymizer cannot remove: it can only
            # follow the source in time (no look-ahead). The synchronised target keeps it.
            target_sync = world_motion(content, replace(target_body, tempo=person.tempo))
            for v, cam in enumerate(cameras):
                clean = cam.project(source)
                joints, state = sensor_model(clean, rng, cam.view_deg)
                writer.append({"joints": joints, "clean": clean, "target": cam.project(target),
                               "target_sync": cam.project(target_sync), "state": state},
                              subject=person.subject, action=a, view=v, rep=rep, sex=person.sex,
                              age_group=person.age_group, distance=round(cam.distance, 4),
                              cam_height=round(cam.height, 4), tilt_deg=round(cam.tilt_deg, 3))
    return Path(out_dir)


def add_target_sync(store_dir: str | Path, progress: bool = True) -> Path:
    """Add the ``target_sync`` array to a SynthKinect store written before it existed.

    Every performance is planned again from the store's generator record (seed, views, dummy):
    the result equals what :func:`generate` writes today, and the other arrays are untouched.
    """
    import json

    from streamtmr.data.store import SkeletonStore

    store = SkeletonStore(store_dir)
    meta, root = store.meta, Path(store_dir)
    if "target_sync" in store.array_names:
        return root
    info = meta.get("info", {})
    if info.get("generator") != "streamtmr.data.synth":
        raise ValueError(f"{root}: not a SynthKinect store (generator {info.get('generator')!r})")
    seed, views = int(info["seed"]), [float(v) for v in meta["views_deg"]]
    people = {p.subject: p for p in sample_population(int(info["subjects"]), seed)}
    body = neutral_identity(np.asarray(meta["dummy"]["lengths"], np.float32))
    shape = (int(meta["frames"]), *ARRAYS["target_sync"])
    tmp = root / "target_sync.f32.tmp"
    out = np.memmap(tmp, dtype=np.float32, mode="w+", shape=shape)
    done: dict[tuple[int, int, int], list] = {}
    for r in _progress(store.rows, progress, "target_sync"):
        key = (r["subject"], r["action"], r["rep"])
        if key not in done:
            person = people[r["subject"]]
            content, cameras, _ = plan_performance(person, r["action"], r["rep"], views, seed)
            motion = world_motion(content, replace(body, tempo=person.tempo))
            done = {key: [cam.project(motion) for cam in cameras]}
        seq = done[key][r["view"]]
        if len(seq) != r["length"]:
            raise ValueError(f"{root}: row {r} has {r['length']} frames, the generator gives "
                             f"{len(seq)} (a store of another generator version?)")
        out[r["offset"]:r["offset"] + r["length"]] = seq
    out.flush()
    del out
    tmp.rename(root / "target_sync.f32")
    meta["arrays"]["target_sync"] = {"dtype": "float32", "frame_shape": list(ARRAYS["target_sync"])}
    (root / "meta.json").write_text(json.dumps(meta, indent=1))
    return root


def _progress(items: list, enabled: bool, label: str) -> Iterable:
    if not enabled:
        yield from items
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn()) as bar:
        task = bar.add_task(label, total=len(items))
        for item in items:
            yield item
            bar.advance(task)


def choose_default_dummy(seed: int = 0, n: int = 2000) -> Dummy:
    """The shipped dummy: the medoid of ``n`` sampled SynthKinect bodies' left/right-symmetrised
    bone-length vectors (labels are never looked at)."""
    lengths = symmetrize(np.stack([p.lengths for p in sample_population(n, seed)]))
    x = lengths.astype(np.float64)
    sq = (x * x).sum(1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0))
    return Dummy("synthkinect-medoid", lengths[int(dist.sum(1).argmin())])


# --------------------------------------------------------------------------------------------
# Statistics for comparing with real recordings
# --------------------------------------------------------------------------------------------

def summary_stats(sequences: np.ndarray | Iterable[np.ndarray], fps: float = FPS) -> dict:
    """Realism statistics of sequences ``[T, 25, 3]`` (one array, a stack or an iterable).

    Returns bone lengths (median per bone, m), ``height`` (ankle→head chain / 0.78, m),
    ``bone_cv`` (mean within-sequence coefficient of variation of bone lengths), joint speeds
    (``speed_mean``, ``speed_p95``, ``hand_speed_p95`` in m/s) and ``jitter_mm`` (median
    over joints of the RMS deviation of each frame from the mean of its two neighbours: the
    frame-to-frame noise, in mm).
    """
    if isinstance(sequences, np.ndarray) and sequences.ndim == 3:
        sequences = [sequences]
    lengths, cv, speeds, hand, jitter = [], [], [], [], []
    hands = [skeleton.JOINT["HandLeft"], skeleton.JOINT["HandRight"]]
    for seq in sequences:
        seq = np.asarray(seq, dtype=np.float64)
        if seq.ndim != 3 or seq.shape[1:] != (skeleton.NUM_JOINTS, 3) or len(seq) < 3:
            raise ValueError(f"expected [T>=3, 25, 3] joints, got {seq.shape}")
        bl = skeleton.bone_lengths(seq)[:, 1:]
        lengths.append(np.median(bl, 0))
        cv.append(float((bl.std(0) / np.maximum(bl.mean(0), 1e-6)).mean()))
        v = np.linalg.norm(np.diff(seq, axis=0), axis=-1) * fps
        speeds.append(v.ravel())
        hand.append(v[:, hands].ravel())
        resid = seq[1:-1] - (seq[:-2] + seq[2:]) / 2
        jitter.append(np.sqrt((resid ** 2).sum(-1).mean(0)))
    if not lengths:
        raise ValueError("summary_stats needs at least one sequence")
    med = np.concatenate([[0.0], np.median(np.stack(lengths), 0)])
    sp, hs = np.concatenate(speeds), np.concatenate(hand)
    return {
        "bone_lengths": med.astype(np.float32),
        "height": float(skeleton.standing_height(med) / CHAIN_RATIO),
        "bone_cv": float(np.mean(cv)),
        "speed_mean": float(sp.mean()),
        "speed_p95": float(np.percentile(sp, 95)),
        "hand_speed_p95": float(np.percentile(hs, 95)),
        "jitter_mm": float(np.median(np.stack(jitter), 0).mean() * 1000),
        "sequences": len(lengths),
    }
