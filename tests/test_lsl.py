"""Lab Streaming Layer through the real liblsl (pylsl's wheel): outlet → source, sink → inlet,
and outlet → ``streamtmr run`` → inlet. Streams are found by name over liblsl's own discovery
on this machine; every name carries the test's pid so parallel runs do not meet."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

pylsl = pytest.importorskip("pylsl")

from sensors.base import SourceError  # noqa: E402
from sensors.lsl import LslSource, open_lsl  # noqa: E402
from sensors.open import open_source  # noqa: E402
from streamtmr import skeleton  # noqa: E402
from streamtmr.cli import main  # noqa: E402
from streamtmr.dummy import default_dummy  # noqa: E402
from streamtmr.stream import lsl  # noqa: E402
from streamtmr.stream.frame import Body, Frame  # noqa: E402
from streamtmr.stream.outputs import open_sink  # noqa: E402
from streamtmr.stream.sinks import SinkError  # noqa: E402

LENGTHS = default_dummy().lengths


def _name(tag: str) -> str:
    return f"stmr-test-{tag}-{os.getpid()}-{time.monotonic_ns() % 10**6}"


def _pose(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (np.array([0.0, 0.0, 2.5]) + rng.normal(0, 0.3, (25, 3))).astype(np.float32)


def _outlet(name: str, labels=None, unit: str | None = None, channels: int = 75):
    info = pylsl.StreamInfo(name, "MoCap", channels, 30, "float32", name)
    if labels is not None:
        chs = info.desc().append_child("channels")
        for label in labels:
            ch = chs.append_child("channel")
            ch.append_child_value("label", label)
            if unit:
                ch.append_child_value("unit", unit)
    return pylsl.StreamOutlet(info)


def _wait_consumer(outlet, timeout: float = 10.0) -> None:
    assert outlet.wait_for_consumers(timeout), "the inlet did not connect"


def test_source_reads_an_unlabelled_outlet_in_kinect_order():
    name = _name("plain")
    outlet = _outlet(name)
    src = open_source(f"lsl://{name}?timeout=10")
    _wait_consumer(outlet)
    poses = [_pose(k) for k in range(5)]
    stamps = [pylsl.local_clock() + k / 30 for k in range(5)]
    for p, t in zip(poses, stamps):
        outlet.push_sample(p.ravel().tolist(), t)
    got = []
    for f in src:
        if f is not None:
            got.append(f)
        if len(got) == 5:
            break
    src.close()
    assert [f.seq for f in got] == list(range(5))
    for f, p, t in zip(got, poses, stamps):
        (body,) = f.bodies
        assert body.id == 0 and body.joints.dtype == np.float32
        np.testing.assert_allclose(body.joints, p, atol=1e-6)
        assert (body.state == 2).all()
        assert abs(f.t_ns - t * 1e9) < 5e6  # same machine: clock sync is an identity
    assert src.closed


def test_source_matches_labels_and_scales_units():
    """Channels in another order, in millimetres: matched by label, scaled to metres."""
    name = _name("mm")
    order = np.random.default_rng(1).permutation(75)
    outlet = _outlet(name, [lsl.LABELS[i] for i in order], unit="millimeters")
    src = LslSource(name, timeout_s=10)
    _wait_consumer(outlet)
    pose = _pose(7)
    outlet.push_sample((pose.ravel()[order] * 1000).tolist())
    frame = next(f for f in src if f is not None)
    src.close()
    np.testing.assert_allclose(frame.bodies[0].joints, pose, atol=1e-5)


def test_source_drops_the_body_of_a_nonfinite_sample():
    name = _name("nan")
    outlet = _outlet(name)
    src = LslSource(name, timeout_s=10)
    _wait_consumer(outlet)
    bad = _pose(0).ravel()
    bad[10] = np.nan
    outlet.push_sample(bad.tolist())
    frame = next(f for f in src if f is not None)
    src.close()
    assert frame.bodies == [] and src.dropped["nonfinite"] == 1


def test_source_errors_name_the_stream():
    missing = _name("missing")
    with pytest.raises(SourceError, match=f"no LSL stream named '{missing}' within 0.5 s"):
        open_lsl(f"lsl://{missing}?timeout=0.5")
    with pytest.raises(SourceError, match="expected lsl://NAME"):
        open_lsl("lsl://")
    with pytest.raises(SourceError, match="timeout"):
        open_lsl("lsl://x?timeout=soon")
    name = _name("eeg")
    outlet = _outlet(name, channels=8)  # noqa: F841 - alive while resolved
    with pytest.raises(SourceError, match="has 8 channels; expected 75"):
        open_lsl(f"lsl://{name}?timeout=10")
    name = _name("labels")
    outlet2 = _outlet(name, [f"ch{i}" for i in range(75)])  # noqa: F841
    with pytest.raises(SourceError, match="channel labels .* are missing"):
        open_lsl(f"lsl://{name}?timeout=10")


def test_sink_publishes_the_mocap_metadata_and_one_body():
    name = _name("sink")
    sink = open_sink(f"lsl://{name}?body=nearest", LENGTHS)
    (info,) = pylsl.resolve_byprop("name", name, minimum=1, timeout=10)
    inlet = pylsl.StreamInlet(info)
    full = inlet.info(timeout=10)
    assert (full.type(), full.channel_count(), full.nominal_srate()) == ("MoCap", 75, 30.0)
    assert full.channel_format() == pylsl.cf_float32
    assert full.source_id() == sink.source_id and full.source_id().startswith(f"streamtmr:{name}@")
    chans = lsl.read_channels(full)
    assert [c[0] for c in chans] == list(lsl.LABELS)
    assert chans[0] == ("SpineBase_X", "PositionX", "meters")
    assert chans[-1] == ("ThumbRight_Z", "PositionZ", "meters")
    ch = full.desc().child("channels").child("channel").next_sibling().next_sibling()
    assert ch.child_value("marker") == "SpineBase" and ch.child_value("type") == "PositionZ"
    inlet.open_stream(timeout=10)
    near, far = _pose(1), _pose(2) + np.array([0, 0, 3], np.float32)
    deadline, got = time.monotonic() + 10, None
    while got is None and time.monotonic() < deadline:
        sink.send(Frame(0, 0, [Body(5, far), Body(6, near)]), b"")
        got, _ = inlet.pull_sample(timeout=0.05)
    sink.close()
    assert got is not None
    np.testing.assert_allclose(np.reshape(got, (25, 3)), near, atol=1e-6)  # the nearest body


def test_sink_spec_errors():
    with pytest.raises(SinkError, match="one body per outlet"):
        open_sink("lsl://x?fanout=2", LENGTHS)
    with pytest.raises(SinkError, match="body='me'"):
        open_sink("lsl://x?body=me", LENGTHS)
    with pytest.raises(SinkError, match="expected lsl://NAME"):
        open_sink("lsl://", LENGTHS)


def test_outlet_node_inlet():
    """A MoCap outlet → ``streamtmr run --source lsl:// --sink lsl://`` → an inlet receiving
    the anonymized body (shipped model): the dummy's bone lengths in every sample."""
    src, dst = _name("in"), _name("out")
    outlet = _outlet(src)
    pose = _pose(3)
    got: list[np.ndarray] = []
    stop = threading.Event()

    def feed() -> None:
        k = 0
        while not stop.is_set():
            outlet.push_sample((pose + 0.01 * np.sin(k / 5)).ravel().tolist())
            k += 1
            time.sleep(1 / 30)

    def collect() -> None:
        found = pylsl.resolve_byprop("name", dst, minimum=1, timeout=30)
        if not found:
            return
        inlet = pylsl.StreamInlet(found[0])
        while not stop.is_set():
            s, _ = inlet.pull_sample(timeout=0.1)
            if s is not None:
                got.append(np.reshape(s, (25, 3)))

    threads = [threading.Thread(target=t, daemon=True) for t in (feed, collect)]
    for t in threads:
        t.start()
    try:
        rc = main(["run", "--engine", "torch", "--budget-ms", "1000", "--source", f"lsl://{src}?timeout=20",
                   "--sink", f"lsl://{dst}", "--duration", "8"])
    finally:
        stop.set()
        for t in threads:
            t.join(5)
    assert rc == 0
    assert len(got) >= 30, f"only {len(got)} anonymized samples"
    bones = skeleton.bone_lengths(np.stack(got))[:, 1:]
    np.testing.assert_allclose(bones, np.broadcast_to(LENGTHS[1:], bones.shape), atol=1e-4)
    assert np.abs(skeleton.bone_lengths(pose)[1:] - LENGTHS[1:]).mean() > 1e-3  # not the input
