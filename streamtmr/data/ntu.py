"""NTU RGB+D ``.skeleton`` reader (Kinect v2, 25 joints, any number of bodies).

File layout (text, one value group per line)::

    <frame count>
    per frame:  <body count>
      per body: bodyID clippedEdges handLeftConfidence handLeftState handRightConfidence
                handRightState isRestricted leanX leanY trackingState        (10 fields)
                <joint count>                                                (must be 25)
                25 lines: x y z depthX depthY colorX colorY qw qx qy qz trackingState

Body ids are 64-bit integers (e.g. 72057594037944738) and are parsed as ``int``, never through a
float. Each body id keeps one slot for the whole sequence (slots in order of first appearance),
so ``joints[:, k]`` is always the same tracked body. Malformed files raise :class:`NTUFormatError`
with ``<file>:<line>: <reason>`` (1-based line numbers).

Parsing walks the file's structure line by line but converts the joint values of a whole file
with one numpy call (only x, y, z and trackingState are converted; the other joint fields are
checked to contain only number characters). When that fails, the blocks are re-scanned to name
the offending line and field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

NUM_JOINTS = 25
INFO_FIELDS = ("bodyID", "clippedEdges", "handLeftConfidence", "handLeftState",
               "handRightConfidence", "handRightState", "isRestricted", "leanX", "leanY",
               "trackingState")
JOINT_FIELDS = ("x", "y", "z", "depthX", "depthY", "colorX", "colorY", "qw", "qx", "qy", "qz",
                "trackingState")

_NUMBER_BYTES = b"0123456789eE+-. \t\r\n"
_NAME = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")


class NTUFormatError(ValueError):
    """A ``.skeleton`` file (or its name) does not follow the NTU RGB+D format."""


@dataclass
class NTUSequence:
    """One parsed ``.skeleton`` file.

    ``joints`` float32 ``[frames, bodies, 25, 3]`` (metres, camera space), ``state`` uint8
    ``[frames, bodies, 25]`` (0 not tracked, 1 inferred, 2 tracked), ``present`` bool
    ``[frames, bodies]``; absent bodies are zero-filled. ``bodies`` is the number of distinct
    body ids in the file; ``body_ids[k]`` is the id of slot ``k``.
    """

    joints: np.ndarray
    state: np.ndarray
    body_ids: list[int]
    present: np.ndarray
    meta: dict[str, int] = field(default_factory=dict)
    path: Path | None = None

    @property
    def num_frames(self) -> int:
        return int(self.joints.shape[0])

    @property
    def num_bodies(self) -> int:
        return len(self.body_ids)

    @property
    def name(self) -> str:
        return self.path.stem if self.path is not None else ""


def parse_filename(name: str | Path) -> dict[str, int]:
    """``S001C002P003R002A013[.skeleton]`` → setup, camera, performer, replication, action."""
    stem = Path(name).name
    if stem.endswith(".skeleton"):
        stem = stem[: -len(".skeleton")]
    m = _NAME.fullmatch(stem)
    if m is None:
        raise NTUFormatError(
            f"{name}: not an NTU RGB+D sample name (expected SsssCcccPpppRrrrAaaa, "
            "e.g. S001C002P003R002A013)")
    keys = ("setup", "camera", "performer", "replication", "action")
    return {k: int(v) for k, v in zip(keys, m.groups(), strict=True)}


class _Lines:
    """Cursor over a file's lines that raises :class:`NTUFormatError` with line numbers."""

    def __init__(self, path: Path, lines: list[str]):
        self.path, self.lines, self.i = path, lines, 0

    def error(self, lineno: int, msg: str) -> NTUFormatError:
        return NTUFormatError(f"{self.path}:{lineno}: {msg}")

    def next(self, what: str) -> tuple[int, list[str]]:
        if self.i >= len(self.lines):
            raise self.error(len(self.lines) + 1, f"truncated file: expected {what}")
        self.i += 1
        return self.i, self.lines[self.i - 1].split()

    def count(self, what: str) -> int:
        lineno, tok = self.next(what)
        if len(tok) != 1:
            raise self.error(lineno, f"expected {what} (one integer), got {len(tok)} fields")
        try:
            n = int(tok[0])
        except ValueError:
            raise self.error(lineno, f"{what} {tok[0]!r} is not an integer") from None
        if n < 0:
            raise self.error(lineno, f"{what} {n} is negative")
        return n


def _check_info(cur: _Lines) -> int:
    lineno, tok = cur.next("a body info line")
    if len(tok) != len(INFO_FIELDS):
        raise cur.error(lineno, f"body info line has {len(tok)} fields, expected "
                                f"{len(INFO_FIELDS)} ({' '.join(INFO_FIELDS)})")
    try:
        body_id = int(tok[0])
    except ValueError:
        raise cur.error(lineno, f"bodyID {tok[0]!r} is not an integer") from None
    for name, t in zip(INFO_FIELDS[1:], tok[1:], strict=True):
        try:
            float(t)
        except ValueError:
            raise cur.error(lineno, f"field {name} {t!r} is not a number") from None
    return body_id


def _locate_bad_block(cur: _Lines, first_line: int) -> NTUFormatError | None:
    """The error for the first bad field of the joint block starting at ``first_line``."""
    for lineno in range(first_line, first_line + NUM_JOINTS):
        for name, t in zip(JOINT_FIELDS, cur.lines[lineno - 1].split(), strict=True):
            try:
                v = float(t)
            except ValueError:
                return cur.error(lineno, f"joint field {name} {t!r} is not a number")
            if name in ("x", "y", "z") and not np.isfinite(v):
                return cur.error(lineno, f"joint field {name} is {t!r} (not finite)")
            if name == "trackingState" and v not in (0.0, 1.0, 2.0):
                return cur.error(lineno, f"joint trackingState {t!r} is not 0, 1 or 2")
    return None


@dataclass
class _Blocks:
    """The joint blocks of a file as scanned: slot per body id, (frame, slot) and first line
    number per block, and every block's joint-line tokens in file order."""

    slots: dict[int, int] = field(default_factory=dict)
    placements: list[tuple[int, int]] = field(default_factory=list)
    first_lines: list[int] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)


def _read_lines(path: Path) -> tuple[bytes, _Lines]:
    """The file's bytes and a line cursor (trailing blank lines dropped)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise NTUFormatError(f"{path}: cannot read ({e.strerror or e})") from None
    lines = raw.decode("utf-8", errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    cur = _Lines(path, lines)
    if not lines:
        raise cur.error(1, "empty file (expected the frame count)")
    return raw, cur


def _scan_body(cur: _Lines, blocks: _Blocks, frame: int, seen: set[int]) -> None:
    """One body of ``frame``: its info line, joint count and 25 joint lines (tokens kept)."""
    info_line = cur.i + 1
    body_id = _check_info(cur)
    if body_id in seen:
        raise cur.error(info_line, f"body id {body_id} appears twice in frame {frame + 1}")
    seen.add(body_id)
    lineno = cur.i + 1
    n_joints = cur.count("joint count")
    if n_joints != NUM_JOINTS:
        raise cur.error(lineno, f"joint count {n_joints}, expected {NUM_JOINTS}")
    start = cur.i
    block = cur.lines[start:start + NUM_JOINTS]
    if len(block) < NUM_JOINTS:
        raise cur.error(len(cur.lines) + 1, f"truncated file: body {body_id} of frame "
                                            f"{frame + 1} has {len(block)} of 25 joint lines")
    tok = " ".join(block).split()
    if len(tok) != NUM_JOINTS * len(JOINT_FIELDS):
        for k, line in enumerate(block):
            n = len(line.split())
            if n != len(JOINT_FIELDS):
                raise cur.error(start + k + 1, f"joint line has {n} fields, expected "
                                               f"{len(JOINT_FIELDS)}")
    blocks.tokens += tok
    cur.i += NUM_JOINTS
    blocks.placements.append((frame, blocks.slots.setdefault(body_id, len(blocks.slots))))
    blocks.first_lines.append(start + 1)


def _scan(cur: _Lines, n_frames: int) -> _Blocks:
    """Walk the file's structure; nothing may follow the last frame."""
    blocks = _Blocks()
    for f in range(n_frames):
        n_bodies = cur.count(f"body count of frame {f + 1}/{n_frames}")
        seen: set[int] = set()
        for _ in range(n_bodies):
            _scan_body(cur, blocks, f, seen)
    lines = cur.lines
    extra = next((k for k in range(cur.i, len(lines)) if lines[k].strip()), None)
    if extra is not None:
        raise cur.error(extra + 1, f"unexpected content after the last of {n_frames} frames")
    return blocks


def _convert(cur: _Lines, raw: bytes, blocks: _Blocks) -> tuple[np.ndarray, np.ndarray]:
    """(xyz ``[blocks, 25, 3]``, trackingState ``[blocks, 25]``) in one numpy conversion; a bad
    value is named by its line and field."""
    n_blocks = len(blocks.placements)
    # Only x y z and trackingState are converted; when the file holds any character that
    # cannot be part of a number, every field is converted so the bad one can be named.
    cols = (0, 1, 2, 11) if not raw.translate(None, _NUMBER_BYTES) else range(len(JOINT_FIELDS))
    step = len(JOINT_FIELDS)
    try:
        values = np.array([blocks.tokens[c::step] for c in cols], dtype=np.float64)
    except ValueError:
        for first in blocks.first_lines:
            error = _locate_bad_block(cur, first)
            if error is not None:
                raise error from None
        raise cur.error(blocks.first_lines[0], "joint values are not numbers") from None
    xyz = values[:3].T.reshape(n_blocks, NUM_JOINTS, 3)
    tracking = values[-1].reshape(n_blocks, NUM_JOINTS)
    valid = np.isfinite(xyz).all(axis=(1, 2)) & np.isin(tracking, (0.0, 1.0, 2.0)).all(axis=1)
    for b in np.flatnonzero(~valid):
        error = _locate_bad_block(cur, blocks.first_lines[b])
        raise error if error is not None else cur.error(blocks.first_lines[b],
                                                        "invalid joint values")
    return xyz, tracking


def _assemble(path: Path, n_frames: int, blocks: _Blocks, xyz: np.ndarray,
              tracking: np.ndarray) -> NTUSequence:
    """Place every block in its (frame, body slot); absent bodies stay zero."""
    ids = list(blocks.slots)
    joints = np.zeros((n_frames, len(ids), NUM_JOINTS, 3), np.float32)
    state = np.zeros((n_frames, len(ids), NUM_JOINTS), np.uint8)
    present = np.zeros((n_frames, len(ids)), bool)
    if blocks.placements:
        fr, sl = np.array(blocks.placements, dtype=np.int64).T
        joints[fr, sl] = xyz
        state[fr, sl] = tracking.astype(np.uint8)
        present[fr, sl] = True
    try:
        meta: dict[str, Any] = parse_filename(path.name)
    except NTUFormatError:
        meta = {}
    return NTUSequence(joints=joints, state=state, body_ids=ids, present=present, meta=meta,
                       path=path)


def read_skeleton(path: str | Path) -> NTUSequence:
    """Parse one NTU RGB+D ``.skeleton`` file (see the module docstring for the layout)."""
    path = Path(path)
    raw, cur = _read_lines(path)
    n_frames = cur.count("frame count")
    blocks = _scan(cur, n_frames)
    xyz, tracking = _convert(cur, raw, blocks)
    return _assemble(path, n_frames, blocks, xyz, tracking)
