"""``streamtmr run``: end to end through the CLI, argument errors, graceful SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from engines.card import write_card
from sensors.replay import ReplaySource
from streamtmr import skeleton
from streamtmr.cli import main
from streamtmr.dummy import default_dummy
from streamtmr.models.checkpoint import default_checkpoint_path, save_checkpoint
from streamtmr.models.registry import build_model
from streamtmr.stream import wire

LENGTHS = default_dummy().lengths
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def naive_ckpt(tmp_path_factory) -> Path:
    """The naive retarget: no privacy card, and it keeps the source's bone directions."""
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "naive.safetensors",
                           build_model({"method": "naive"}))




def _bone_err(joints):
    return float(np.abs(skeleton.bone_lengths(joints)[1:] - LENGTHS[1:]).max())


def _base(ckpt: Path, port: int) -> list[str]:
    return ["run", "--engine", "torch", "--model", str(ckpt), "--window", "16", "--fast",
            "--sink", f"zmq://127.0.0.1:{port}", "--budget-ms", "1000"]


def test_run_synthetic_to_zmq_with_record_and_stats(model_ckpt, tmp_path, capsys):
    probe = zmq.Context.instance().socket(zmq.PUB)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(0)
    got, done = [], threading.Event()

    def subscribe() -> None:
        """A client joining the running node (after it bound), collecting until it ends."""
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        time.sleep(0.5)
        sub.connect(f"tcp://127.0.0.1:{port}")
        while not done.is_set() or sub.poll(200):
            if sub.poll(50):
                got.append(wire.decode_message(sub.recv()))
        sub.close(0)
        ctx.term()

    client = threading.Thread(target=subscribe, daemon=True)
    client.start()
    stats, rec = tmp_path / "stats.json", tmp_path / "anon.stmr"
    # real-time pacing (3 s): the subscriber has time to join before the stream ends
    argv = [a for a in _base(model_ckpt, port) if a != "--fast"]
    try:
        rc = main([*argv, "--source", "synthetic", "--max-frames", "90",
                   "--record", str(rec), "--stats-json", str(stats)])
    finally:
        done.set()
        client.join(10)
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["frames_in"] == 90 and summary["frames_out"] == 90
    data = json.loads(stats.read_text())
    assert data["counters"]["frames_out"] == 90 and data["config"]["overrun"] == "hold"
    assert data["latency"]["infer"]["count"] >= 1
    # the recording replays, and everything in it has the dummy's bone lengths
    frames = list(ReplaySource(rec, realtime=False))
    assert len(frames) == 90 and sum(len(f.bodies) for f in frames) > 0
    assert all(_bone_err(b.joints) < 1e-4 for f in frames for b in f.bodies)
    # a late joiner misses the first messages, then gets only anonymized frames
    assert got and all(m.anon is not None for m in got)


@pytest.mark.skipif(not (Path(__file__).resolve().parents[2] / "shared/data/real/ntu_samples")
                    .is_dir(), reason="real NTU samples not found")
def test_run_replays_ntu(model_ckpt, tmp_path):
    rec = tmp_path / "ntu.stmr"
    ntu = Path(__file__).resolve().parents[2] / "shared/data/real/ntu_samples"
    sample = sorted(ntu.glob("*.skeleton"))[0]
    port = zmq.Context.instance().socket(zmq.PUB)
    p = port.bind_to_random_port("tcp://127.0.0.1")
    port.close(0)
    assert main([*_base(model_ckpt, p), "--source", f"replay:{sample}", "--record",
                 str(rec)]) == 0
    frames = list(ReplaySource(rec, realtime=False))
    assert len(frames) > 30 and all(_bone_err(b.joints) < 1e-4 for f in frames for b in f.bodies)


@pytest.mark.parametrize("args,needle", [
    (["--source", "webcam"], "--source"),
    (["--source", "replay:/nonexistent/x.skeleton"], "--source"),
    (["--sink", "http://127.0.0.1:1"], "--sink"),
    (["--model", "/nonexistent/model.safetensors"], "--model"),
    (["--engine", "warp-drive"], "--engine"),
    (["--dummy", "/nonexistent/dummy.json"], "--dummy"),
    (["--hop", "20"], "--hop"),
])
def test_bad_arguments_are_user_errors(model_ckpt, capsys, args, needle):
    base = ["run", "--engine", "torch", "--model", str(model_ckpt), "--window", "16",
            "--fast", "--max-frames", "1", "--sink", "tcp://127.0.0.1:*"]
    rc = main(base + args)
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err


@pytest.mark.parametrize("args", [["--budget-ms", "-1"], ["--window", "0"],
                                  ["--overrun", "maybe"], ["--fast", "--realtime"]])
def test_malformed_numbers_rejected_by_parser(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", *args])
    assert e.value.code == 2 and args[0] in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "win32", reason="checks the non-Windows error")
def test_kinect_off_windows(model_ckpt, capsys):
    rc = main(["run", "--engine", "torch", "--model", str(model_ckpt), "--window", "16",
               "--source", "kinect", "--sink", "tcp://127.0.0.1:*"])
    err = capsys.readouterr().err
    assert rc == 2 and "synthetic" in err and "zmq://" in err


@pytest.mark.skipif(not default_checkpoint_path().is_file(),
                    reason="the shipped default model is not trained yet")
def test_default_model_runs(tmp_path):
    p = zmq.Context.instance().socket(zmq.PUB)
    port = p.bind_to_random_port("tcp://127.0.0.1")
    p.close(0)
    rec = tmp_path / "d.stmr"
    assert main(["run", "--source", "synthetic", "--fast", "--max-frames", "40",
                 "--sink", f"zmq://127.0.0.1:{port}", "--budget-ms", "2000",
                 "--record", str(rec)]) == 0
    frames = list(ReplaySource(rec, realtime=False))
    assert all(_bone_err(b.joints) < 1e-4 for f in frames for b in f.bodies)


def test_sigterm_is_graceful(model_ckpt, tmp_path):
    stats = tmp_path / "stats.json"
    p = zmq.Context.instance().socket(zmq.PUB)
    port = p.bind_to_random_port("tcp://127.0.0.1")
    p.close(0)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamtmr", "run", "--engine", "torch", "--model",
         str(model_ckpt), "--window", "16", "--source", "synthetic", "--budget-ms", "1000",
         "--sink", f"zmq://127.0.0.1:{port}", "--stats-json", str(stats),
         "--stats-interval", "0.3"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if stats.is_file() and json.loads(stats.read_text())["counters"].get("frames_out"):
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    final = json.loads(stats.read_text())
    assert final["counters"]["frames_out"] > 0
    assert json.loads(out.strip().splitlines()[-1])["frames_out"] == final["counters"][
        "frames_out"]


def test_model_without_card_is_refused_unless_allowed_then_leak_guard(naive_ckpt, capsys):
    """The naive retarget has no card (refused, naming --allow-unevaluated); allowed, the leak
    guard refuses it on the calibration clip: it keeps the source's bone directions."""
    base = ["run", "--engine", "torch", "--model", str(naive_ckpt), "--window", "16",
            "--fast", "--max-frames", "1", "--sink", "tcp://127.0.0.1:*"]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "privacy card" in err and "--allow-unevaluated" in err and "Traceback" not in err
    assert main([*base, "--allow-unevaluated"]) == 2
    err = capsys.readouterr().err
    assert "leak guard" in err and "Traceback" not in err


def test_pickle_model_refused(tmp_path, capsys):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    assert main(["run", "--model", str(bad), "--max-frames", "1",
                 "--sink", "tcp://127.0.0.1:*"]) == 2
    err = capsys.readouterr().err
    assert "pickle" in err and "Traceback" not in err


@pytest.mark.skipif(not (Path(__file__).resolve().parents[2] / "shared/data/real/ntu_samples")
                    .is_dir(), reason="real NTU samples not found")
def test_truncated_replay_is_one_line_error(model_ckpt, tmp_path, capsys):
    ntu = Path(__file__).resolve().parents[2] / "shared/data/real/ntu_samples"
    data = sorted(ntu.glob("*.skeleton"))[0].read_bytes()
    cut = tmp_path / "cut.skeleton"
    cut.write_bytes(data[:len(data) // 2])
    rc = main(["run", "--engine", "torch", "--model", str(model_ckpt), "--window", "16",
               "--fast", "--budget-ms", "1000", "--sink", "tcp://127.0.0.1:*",
               "--source", f"replay:{cut}"])
    err = capsys.readouterr().err
    assert rc == 2 and "--source" in err and "Traceback" not in err


def test_compare_on_nan_input_blames_the_input(tmp_path, capsys):
    seq = np.repeat(default_dummy().rest_pose()[None], 20, axis=0) + [0, 0, 3]
    seq[7, 4, 1] = np.nan
    src = tmp_path / "nan.npy"
    np.save(src, seq.astype(np.float32))
    rc = main(["compare", str(src), "--out", str(tmp_path / "c.gif"), "--method", "naive"])
    err = capsys.readouterr().err
    assert rc == 2 and "input has non-finite" in err and "frame 7" in err
    assert "Traceback" not in err and not (tmp_path / "c.gif").exists()


def test_hop_with_a_streaming_model_is_a_one_line_error(tmp_path, capsys):
    import torch

    from streamtmr.models.registry import model_class

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "s.safetensors",
                           model_class("tmr-stream").from_preset("tiny"))
    write_card(ckpt, {"command": "a test card"})
    rc = main(["run", "--engine", "onnxruntime", "--model", str(ckpt), "--hop", "2",
               "--fast", "--max-frames", "1", "--sink", "tcp://127.0.0.1:*"])
    err = capsys.readouterr().err
    assert rc == 2 and "--hop 2" in err and "streaming" in err and "Traceback" not in err
