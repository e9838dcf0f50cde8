"""Fail closed for real: the leak guard, per-body output checks, privacy cards, open_engine."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from engines import ModelRefused, create_engine, open_engine
from engines.card import ONNX_KEY, find_card, write_card
from engines.onnx_export import export_onnx
from engines.select import leak_score
from engines.source import resolve_source
from streamtmr import leak_guard, skeleton
from streamtmr.data import synth
from streamtmr.dummy import default_dummy
from streamtmr.models.checkpoint import default_checkpoint_path, save_checkpoint
from streamtmr.models.registry import build_model
from streamtmr.stream import wire
from streamtmr.stream.frame import Body, Frame
from streamtmr.stream.node import Node, NodeConfig

torch.set_num_threads(1)
LENGTHS = default_dummy().lengths
REST = default_dummy().rest_pose()


def identity_onnx(path: Path, window: int = 16) -> Path:
    """An ONNX model with valid streamtmr metadata whose output equals its input."""
    x = helper.make_tensor_value_info("windows", TensorProto.FLOAT, ["b", window, 25, 3])
    y = helper.make_tensor_value_info("anonymized", TensorProto.FLOAT, ["b", window, 25, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["windows"], ["anonymized"])],
                              "identity", [x], [y])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    meta = {"method": "tmr", "config": json.dumps({"method": "tmr"}), "window": str(window),
            "dummy": json.dumps({"name": "default", "lengths": [float(v) for v in LENGTHS]})}
    for k, v in meta.items():
        e = m.metadata_props.add()
        e.key, e.value = "streamtmr." + k, v
    onnx.save(m, str(path))
    return path


PRIVACY = {"reid_top1_adaptive_pct": 16.4, "command": "a test card (numbers for illustration)"}


@pytest.fixture(scope="module")
def carded(tmp_path_factory) -> Path:
    """A copy of the shipped weights with a card of their own beside it (the mechanism is
    tested apart from whichever default is shipped)."""
    d = tmp_path_factory.mktemp("carded")
    shutil.copyfile(default_checkpoint_path(), d / "model.safetensors")
    write_card(d / "model.safetensors", PRIVACY, name="test")
    return d / "model.safetensors"


@pytest.fixture(scope="module")
def default_engine(carded):
    return open_engine("onnxruntime", model=carded, window=16)


# -- the margin -----------------------------------------------------------------------------

def test_ideal_synthkinect_output_passes_and_pass_through_fails():
    """The margin is set from the ideal streaming output (the dummy in the neutral style at
    the person's own tempo): it must pass frame by frame through the node's pooled guard;
    the source itself (identity) and its naive retarget must not."""
    body = synth.neutral_identity(np.asarray(LENGTHS, np.float32))
    people = synth.sample_population(3, 7)
    ideal, naive = [], []
    for p in people:
        for ai in range(0, len(synth.ACTIONS), 4):
            content, cams, _ = synth.plan_performance(p, ai, 0, [30.0], 7)
            src = cams[0].project(synth.world_motion(content, p)).astype(np.float32)
            tgt = cams[0].project(synth.world_motion(content, replace(body, tempo=p.tempo)))
            guard = leak_guard.LeakGuard(1)
            ok = [guard.update([0], [0], leak_guard.frame_angles(tgt[t:t + 1], src[t:t + 1])
                               [None])[0] for t in range(len(src))]
            ideal.append(np.mean(ok))
            naive_out = skeleton.set_bone_lengths(src, LENGTHS)
            naive.append(leak_guard.frame_angles(naive_out, src).max())
    assert min(ideal) == 1.0, "the ideal output was refused in some frames"
    assert max(naive) < 0.1 < leak_guard.MARGIN_DEG  # float32 rounding of the directions


# -- start-up: open_engine --------------------------------------------------------------------

def test_identity_onnx_refused_without_card_then_by_leak_guard(tmp_path):
    path = identity_onnx(tmp_path / "identity.onnx")
    with pytest.raises(ModelRefused, match="privacy card.*allow-unevaluated"):
        open_engine("onnxruntime", model=path, window=None)
    with pytest.raises(ModelRefused, match="leak guard"):
        open_engine("onnxruntime", model=path, window=None, allow_unevaluated=True)
    eng = open_engine("onnxruntime", model=path, window=None, allow_unevaluated=True,
                      leak_guard=False)
    assert eng.unevaluated and leak_score(eng) == 0.0  # the baseline switch is explicit


def test_naive_retarget_refused_by_leak_guard(tmp_path):
    ckpt = save_checkpoint(tmp_path / "naive.safetensors", build_model({"method": "naive"}))
    with pytest.raises(ModelRefused, match="leak guard.*follows its input"):
        open_engine("torch", model=ckpt, window=16, allow_unevaluated=True)


def test_carded_default_passes(default_engine, carded):
    assert not default_engine.unevaluated
    assert default_engine.card["sha256"] == hashlib.sha256(carded.read_bytes()).hexdigest()
    assert leak_score(default_engine) > 4 * leak_guard.MARGIN_DEG  # 9.6° at window 16


def test_the_shipped_default_has_a_card_bound_to_its_weights():
    """The shipped default runs without --allow-unevaluated: its card (default_model.json)
    names the SHA-256 of default_model.safetensors and its evaluated numbers."""
    card = find_card(default_checkpoint_path())
    assert card is not None and card["privacy"]


def test_card_bound_to_other_weights_refused(tmp_path, carded):
    d = tmp_path / "m"
    d.mkdir()
    data = bytearray(carded.read_bytes())
    data[-1] ^= 1  # one bit of the weights changed; the card still names the old hash
    (d / "model.safetensors").write_bytes(bytes(data))
    shutil.copyfile(carded.with_suffix(".card.json"), d / "model.card.json")
    with pytest.raises(ModelRefused, match="bound to weights"):
        open_engine("torch", model=d / "model.safetensors", window=16)


def test_card_in_onnx_metadata_bound_to_the_graph(tmp_path):
    src = resolve_source(None, None, 16)
    path = export_onnx(src, tmp_path / "m.onnx")
    m = onnx.load(str(path))
    card = {"privacy": {"reid_top1_adaptive_pct": 16.4},
            "graph_sha256": hashlib.sha256(m.graph.SerializeToString(deterministic=True))
            .hexdigest()}
    e = m.metadata_props.add()
    e.key, e.value = ONNX_KEY, json.dumps(card)
    onnx.save(m, str(path))
    assert find_card(path)["privacy"]["reid_top1_adaptive_pct"] == 16.4
    m.graph.initializer[0].raw_data = bytes(len(m.graph.initializer[0].raw_data))
    onnx.save(m, str(path))
    with pytest.raises(ModelRefused, match="bound to graph"):
        open_engine("onnxruntime", model=path)


def test_pickle_and_size_checks_for_every_entry(tmp_path):
    bad = tmp_path / "m.safetensors"
    bad.write_bytes(b"\x80\x04" + b"\x00" * 32)
    with pytest.raises(ModelRefused, match="pickle"):
        open_engine("torch", model=bad)
    with pytest.raises(ModelRefused, match="no such file"):
        open_engine("torch", model=tmp_path / "missing.safetensors")


# -- run time: the node -------------------------------------------------------------------------

def person(seq: int, offset: float = 0.0) -> np.ndarray:
    pose = REST * 0.92 + np.array([offset, 0.0, 3.0], np.float32)
    pose[skeleton.JOINT["WristLeft"], 1] += 0.15 * np.sin(seq / 5)
    pose[skeleton.JOINT["KneeRight"], 2] += 0.1 * np.sin(seq / 7)
    return pose.astype(np.float32)


def test_node_refuses_naive_output_at_run_time():
    """A pass-through model that slipped past start-up (the node runs whatever it is given)
    is caught per body: nothing published, every body counted as leak_guard."""
    eng = create_engine("torch", model=build_model({"method": "naive"}), window=16)
    node = Node(eng, config=NodeConfig(budget_ms=2000))
    frames = [Frame(s, int(s * 33e6), [Body(1, person(s), np.full(25, 2, np.uint8))], "t")
              for s in range(30)]
    published = [b for f in frames for out in node.step(f) for b in out.bodies]
    stats = node.close()
    assert published == [] and stats["dropped"]["leak_guard"] == 30


def test_collapsed_body_does_not_blank_the_good_one(default_engine):
    """One body with every joint at one point (valid on the wire) makes the model's output
    non-finite; the other body keeps getting fresh output, the bad one is counted."""
    node = Node(default_engine, config=NodeConfig(budget_ms=5000))
    collapsed = np.tile(np.array([[0.1, 0.2, 2.5]], np.float32), (25, 1))
    st = np.full(25, 2, np.uint8)
    good = []
    for s in range(40):
        bodies = [Body(1, person(s), st), Body(2, collapsed, st)]
        out = node.step(Frame(s, int(s * 33e6), bodies, "t"))
        good += [b.joints for f in out for b in f.bodies if b.id == 1]
        assert all(np.isfinite(b.joints).all() for f in out for b in f.bodies)
    stats = node.close()
    fresh = sum(np.abs(good[i] - good[i - 1]).max() > 1e-6 for i in range(1, len(good)))
    assert len(good) == 40 and fresh >= 35
    assert sum(stats["dropped"].get(r, 0) for r in ("bad_output", "bone_check")) >= 40


def test_unevaluated_model_marks_every_message(tmp_path):
    """--allow-unevaluated: the node logs it and marks every output message."""
    ckpt = save_checkpoint(tmp_path / "naive.safetensors", build_model({"method": "naive"}))
    eng = open_engine("torch", model=ckpt, window=16, allow_unevaluated=True,
                      leak_guard=False)
    rec = tmp_path / "out.stmr"
    recorder = wire.Recorder(rec)
    node = Node(eng, config=NodeConfig(budget_ms=2000, leak_guard=False), recorder=recorder)
    st = np.full(25, 2, np.uint8)
    for s in range(5):
        node.step(Frame(s, int(s * 33e6), [Body(1, person(s), st)], "t"))
    stats = node.close()
    msgs = [wire.decode_message(m) for m in wire.read_recording(rec)]
    assert len(msgs) == 5 and all(m.anon.unevaluated for m in msgs)
    assert stats["unevaluated"] is True and stats["card"] is None


def test_stats_report_the_graph_actually_loaded(default_engine):
    """The stats carry the SHA-256 of the ONNX bytes ONNX Runtime loaded and the card."""
    node = Node(default_engine, config=NodeConfig(budget_ms=5000))
    stats = node.close()
    assert stats["graph_sha256"] == default_engine.graph_sha256 is not None
    assert stats["card"]["privacy"] == PRIVACY


def test_tampered_cache_with_rewritten_checksum_reports_the_graph_that_runs(tmp_path, carded,
                                                                           monkeypatch):
    """Issue 11: with a tampered engine cache plus its rewritten checksum file, the stats
    reported the shipped checkpoint's SHA-256. Now they report the hash of the bytes ONNX
    Runtime loaded, so the swap shows (and the leak guard still refuses a pass-through)."""
    from streamtmr.cache import verify, write_sidecar

    monkeypatch.setenv("STREAMTMR_CACHE", str(tmp_path / "cache"))
    honest = open_engine("onnxruntime", model=carded, window=16)
    honest_hash = honest.graph_sha256
    cached = sorted((tmp_path / "cache" / "ort").glob("*.onnx"))
    assert len(cached) == 1
    facts = verify(cached[0])
    m = onnx.load(str(cached[0]))  # tamper: the optimised graph gets one weight changed
    init = m.graph.initializer[0]
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.flat[0] += 1.0
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    onnx.save(m, str(cached[0]))
    write_sidecar(cached[0], {k: v for k, v in facts.items() if k != "sha256"})
    eng = open_engine("onnxruntime", model=carded, window=16)
    node = Node(eng, config=NodeConfig(budget_ms=5000))
    stats = node.close()
    tampered = hashlib.sha256(cached[0].read_bytes()).hexdigest()
    assert stats["graph_sha256"] == tampered != honest_hash
    assert stats["engine"]["model_sha256"] == honest.describe()["model_sha256"]


def test_a_model_that_leaks_now_and_then_is_caught_frame_by_frame():
    """Pooling over recent frames alone would let one pass-through frame among good ones
    out; the frame margin refuses it, and the good frames around it still pass."""
    g = leak_guard.LeakGuard(2)
    for _ in range(10):
        assert g.update([0, 1], [0, 0], np.array([[20.0], [25.0]])).all()
    ok = g.update([0, 1], [0, 0], np.array([[0.0], [22.0]]))
    assert ok.tolist() == [False, True]
    assert g.update([0, 1], [0, 0], np.array([[19.0], [22.0]])).all()
    assert not g.update([0], [1], np.array([[0.5]]))[0]  # a new track starts over


def test_embedding_api_uses_the_guarded_door(tmp_path):
    from streamtmr.stream import api

    bad = tmp_path / "m.safetensors"
    bad.write_bytes(b"PK\x03\x04" + b"\x00" * 64)  # a torch.save zip: pickle inside
    with pytest.raises(ModelRefused, match="pickle"):
        api.LiveAnonymizer(model=str(bad), backend="torch")
    naive = save_checkpoint(tmp_path / "naive.safetensors", build_model({"method": "naive"}))
    with pytest.raises(ModelRefused, match="leak guard"):
        api.LiveAnonymizer(model=str(naive), backend="torch", window=16, allow_unevaluated=True)


def test_export_carries_the_card_bound_to_the_exported_graph(tmp_path, carded, capsys):
    """`streamtmr export` of a carded checkpoint embeds the card in the ONNX, bound to the
    graph's hash: the exported file runs without --allow-unevaluated; an export of a
    checkpoint without a card is marked unevaluated and refused by default."""
    from streamtmr.cli import main

    out = tmp_path / "m.onnx"
    assert main(["export", "--model", str(carded), "--window", "16", "--out", str(out)]) == 0
    assert "privacy card embedded" in capsys.readouterr().out
    eng = open_engine("onnxruntime", model=out, window=None)
    assert not eng.unevaluated and eng.card["weights_sha256"] == find_card(carded)["sha256"]


def test_export_runs_the_model_file_checks(tmp_path, capsys):
    from streamtmr.cli import main

    bad = tmp_path / "m.safetensors"
    bad.write_bytes(b"\x80\x05" + b"\x00" * 64)
    assert main(["export", "--model", str(bad), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "pickle" in err and "Traceback" not in err and not (tmp_path / "m.onnx").exists()
