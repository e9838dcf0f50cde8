"""Engines: one interface over ONNX Runtime, PyTorch and TensorRT; selection; caches."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import tiny
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from engines import BackendUnavailable, EngineError, create_engine, resolve_source
from engines.onnx_export import export_onnx
from engines.tensorrt_engine import load_verified_plan, plan_facts, plan_path
from engines.torch_engine import graph_blocker
from streamtmr import skeleton
from streamtmr.cache import sidecar, verify, write_sidecar
from streamtmr.dummy import Dummy, default_dummy
from streamtmr.models.checkpoint import (
    CheckpointError,
    default_checkpoint_path,
    load_checkpoint,
    shipped_path,
)
from streamtmr.models.registry import available, model_class

DETERMINISTIC = [m for m in available() if m != "noise"]
HAS_CUDA = torch.cuda.is_available()


pytestmark = pytest.mark.usefixtures("isolated_cache")


def windows(batch: int, T: int, seed: int = 0) -> np.ndarray:
    """Smooth motion of the dummy's body, shifted in front of the sensor."""
    rng = np.random.default_rng(seed)
    pose = default_dummy().rest_pose()
    t = np.arange(T, dtype=np.float32)[None, :, None, None]
    x = pose + 0.1 * np.sin(0.3 * t + rng.uniform(0, 6, (batch, 1, 25, 3)))
    return (x + np.array([0, 0, 3], np.float32)).astype(np.float32)


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_onnxruntime_and_torch_agree_with_batch_splitting(method):
    model = tiny(method)
    ort_engine = create_engine("onnxruntime", model=model, window=None, max_batch=4)
    torch_engine = create_engine("torch", model=model, window=None, max_batch=3)
    x = windows(11, model.window)  # 11 = 4 + 4 + 3 and 3 + 3 + 3 + 2
    y = ort_engine.run(x)
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, torch_engine.run(x), atol=1e-4)
    # split batches give what one window at a time gives
    one = np.concatenate([ort_engine.run(x[i:i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(y, one, atol=1e-5)
    # every output frame has the dummy's bone lengths
    np.testing.assert_allclose(skeleton.bone_lengths(y)[..., 1:],
                               np.broadcast_to(default_dummy().lengths[1:], y.shape[:2] + (24,)),
                               atol=1e-4)


def test_run_latest_out_buffer_and_describe():
    engine = create_engine("onnxruntime", model=tiny("naive"), window=16, max_batch=2)
    x = windows(5, 16)
    full = engine.run(x)
    latest = engine.run_latest(x, k=3)
    assert latest.shape == (5, 3, 25, 3) and latest.flags.c_contiguous
    np.testing.assert_array_equal(latest, full[:, -3:])
    np.testing.assert_array_equal(engine.run_latest(x)[:, 0], full[:, -1])
    out = np.zeros_like(x)
    assert engine.run(x, out=out) is out
    np.testing.assert_array_equal(out, full)
    with pytest.raises(ValueError, match="k must be"):
        engine.run_latest(x, k=17)
    engine.warmup((1, 5))
    d = engine.describe()
    for key in ("backend", "device", "precision", "max_batch", "window", "model", "dummy",
                "model_sha256"):
        assert key in d
    assert (d["backend"], d["device"], d["precision"], d["max_batch"], d["window"]) == (
        "onnxruntime", "cpu", "fp32", 2, 16)
    assert d["dummy"] == default_dummy().name and len(d["model_sha256"]) == 64
    assert engine.name == "onnxruntime" and engine.dummy_lengths.dtype == np.float32


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_bad_input_is_rejected(backend):
    engine = create_engine(backend, model=tiny("naive"), window=8)
    good = windows(2, 8)
    bad_nan = good.copy()
    bad_nan[1, 3, 4, 2] = np.nan
    cases = [(good.astype(np.float64), "dtype"), (good[:, :7], "shape"),
             (good[0], "shape"), (good.tolist(), "numpy"), (bad_nan, "batch 1, frame 3"),
             (np.full_like(good, np.inf), "non-finite")]
    for x, msg in cases:
        with pytest.raises(ValueError, match=msg):
            engine.run(x)
    with pytest.raises(ValueError, match="out"):
        engine.run(good, out=np.empty((3, 8, 25, 3), np.float32))
    assert engine.run(good[:0]).shape == (0, 8, 25, 3)


def test_io_binding_gives_the_same_result():
    model = tiny("tmr")
    # the same session either way (the batch-1 session is compared in its own test)
    a = create_engine("onnxruntime", model=model, window=None, io_binding=False, single=False)
    b = create_engine("onnxruntime", model=model, window=None, io_binding=True, threads=1)
    x = windows(9, model.window)
    np.testing.assert_array_equal(a.run(x), b.run(x))
    assert b.describe()["io_binding"] and b.describe()["threads"] == 1


@pytest.mark.parametrize("method", ["tmr", "tmr-stream", "motion_match"])
def test_single_body_calls_run_the_batch_1_session_and_agree_with_the_general_one(method):
    """On CPU one body (or window) per call runs a session whose batch axis is fixed to 1;
    it computes what the general session computes, to float rounding, step by step."""
    model = tiny(method)
    one = create_engine("onnxruntime", model=model, window=None)
    general = create_engine("onnxruntime", model=model, window=None, single=False)
    assert one.describe()["single_session"] and not general.describe()["single_session"]
    x = windows(2, max(24, model.window), seed=3)
    name = one.single.get_inputs()[0].name
    with pytest.raises(Exception, match="(?i)dimension|shape"):  # its batch axis is fixed
        one.single.run(None, {name: x[:, :model.window] if not one.streaming else x[:, 0],
                              **({} if not one.streaming else {
                                  "state_in." + k: v for k, v in one.init_state(2).items()})})
    if not one.streaming:
        np.testing.assert_allclose(one.run(x[:1, :model.window]),
                                   general.run(x[:, :model.window])[:1], atol=1e-5)
        return
    a, b = one.init_state(1), general.init_state(2)
    for t in range(x.shape[1]):  # body 0 alone, and beside another body
        ya, a = one.step(x[:1, t], a)
        yb, b = general.step(x[:, t], b)
        np.testing.assert_allclose(ya, yb[:1], atol=1e-5)
        for k in a:
            np.testing.assert_allclose(a[k], b[k][:1], atol=1e-4, err_msg=k)


def test_shared_initializers_are_the_large_ones():
    """The two sessions take the graph's large initializers from one copy; small ones and
    small graphs are left to each session."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from engines.ort_engine import SHARED_BYTES, shared_initializers

    big = np.arange(SHARED_BYTES // 4, dtype=np.float32).reshape(-1, 16)
    small = np.ones((4, 16), np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "small_t"], ["y"]),
         helper.make_node("Gather", ["big", "i"], ["z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("i", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(big, "big"), numpy_helper.from_array(small, "small_t")])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = data.SerializeToString()
    shared = shared_initializers(ort, data)
    assert list(shared) == ["big"] and np.array_equal(shared["big"].numpy(), big)
    graph.initializer.pop(0)  # without the large one: nothing to share
    small_only = onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert shared_initializers(ort, small_only.SerializeToString()) == {}
    so = ort.SessionOptions()
    so.add_initializer("big", shared["big"])
    so.add_free_dimension_override_by_name("batch", 1)
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    y, z = sess.run(None, {"x": np.ones((1, 4), np.float32), "i": np.array([3])})
    np.testing.assert_array_equal(z, big[3:4])


def test_onnx_file_loads_alone(tmp_path):
    model = tiny("pmr")
    dummy = Dummy("tall", default_dummy().lengths * 1.1)
    source = resolve_source(model, dummy, None)
    path = export_onnx(source, tmp_path / "pmr.onnx")
    engine = create_engine("auto", model=path, window=None)
    assert engine.window == model.window and engine.describe()["dummy"] == "tall"
    np.testing.assert_allclose(engine.dummy_lengths, dummy.lengths, atol=1e-6)
    x = windows(3, model.window)
    with torch.inference_mode():
        expected = source.module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(engine.run(x), expected, atol=1e-4)
    assert create_engine("onnxruntime", model=str(path), dummy=dummy, window=model.window)
    with pytest.raises(ValueError, match="window"):
        create_engine("onnxruntime", model=path, window=model.window + 1)
    with pytest.raises(ValueError, match="baked in"):
        create_engine("onnxruntime", model=path, dummy="default", window=None)
    with pytest.raises(EngineError, match="checkpoint"):
        create_engine("torch", model=path, window=None)
    bare = tmp_path / "bare.onnx"
    import onnx
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(bare))
    with pytest.raises(ValueError, match="not exported by streamtmr"):
        create_engine("onnxruntime", model=bare, window=None)


def test_noise_engine_keeps_dummy_bones():
    engine = create_engine("onnxruntime", model=tiny("noise"), window=8)
    y = engine.run(windows(2, 8))
    np.testing.assert_allclose(skeleton.bone_lengths(y)[..., 1:],
                               np.broadcast_to(engine.dummy_lengths[1:], (2, 8, 24)), atol=1e-4)


def test_optimised_model_cache_is_reused_and_verified(tmp_path):
    model = tiny("moon-resnet")
    x = windows(2, model.window)
    first = create_engine("onnxruntime", model=model, window=None)
    cached = sorted((tmp_path / "cache" / "ort").glob("*.onnx"))
    assert len(cached) == 1 and verify(cached[0]) is not None
    expected = first.run(x)
    np.testing.assert_allclose(create_engine("onnxruntime", model=model, window=None).run(x),
                               expected, atol=1e-6)
    cached[0].write_bytes(b"tampered")  # fails its checksum: rebuilt, never loaded
    again = create_engine("onnxruntime", model=model, window=None)
    np.testing.assert_allclose(again.run(x), expected, atol=1e-6)
    assert verify(cached[0]) is not None


def test_export_key_follows_the_code_and_the_state_not_only_the_version(tmp_path, monkeypatch):
    """An ONNX export is cached by the model's weights, dummy, window and version, and also by
    the source of the classes that define it and its state: code that adds a state entry under
    the same version (motion matching's ``anchor`` did) exports again instead of reusing a
    graph that lacks the new input."""
    import importlib
    import sys

    from engines.source import code_fingerprint, resolve_source

    pkg = tmp_path / "fp_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "net.py").write_text("from torch import nn\nclass Net(nn.Module):\n    k = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    net = importlib.import_module("fp_pkg.net")
    before = code_fingerprint(net.Net())
    (pkg / "net.py").write_text("from torch import nn\nclass Net(nn.Module):\n    k = 2\n")
    assert code_fingerprint(net.Net()) != before          # read from the file, not cached
    del sys.modules["fp_pkg.net"], sys.modules["fp_pkg"]
    # the project's modules a model file uses count too: a changed search re-exports
    from engines.source import source_files
    names = {os.path.basename(f) for f in source_files(tiny("motion_match"))}
    assert {"motion_match.py", "box_tree.py", "skeleton.py"} <= names

    source = resolve_source(tiny("motion_match"), window=None)
    key = source.graph_key
    source.state_spec = {**source.state_spec, "extra": (3,)}
    assert source.graph_key != key


def test_plan_cache_keys_and_checksum(tmp_path):
    facts = plan_facts("NVIDIA H100", "10.9.0", "ab" * 32, "fp16", 8, 64)
    path = plan_path(facts)
    for other in (plan_facts("NVIDIA A100", "10.9.0", "ab" * 32, "fp16", 8, 64),
                  plan_facts("NVIDIA H100", "10.10.0", "ab" * 32, "fp16", 8, 64),
                  plan_facts("NVIDIA H100", "10.9.0", "cd" * 32, "fp16", 8, 64),
                  plan_facts("NVIDIA H100", "10.9.0", "ab" * 32, "fp32", 8, 64),
                  {**facts, "recipe": facts["recipe"] - 1}):  # built the older way
        assert plan_path(other) != path
    assert load_verified_plan(path, facts) is None  # nothing cached yet
    path.write_bytes(b"serialised plan bytes")
    write_sidecar(path, facts)
    assert load_verified_plan(path, facts) == b"serialised plan bytes"
    assert load_verified_plan(path, {**facts, "tensorrt": "10.10.0"}) is None
    path.write_bytes(b"serialised plan bytez")  # tampered: rejected before deserialising
    assert load_verified_plan(path, facts) is None
    record = json.loads(sidecar(path).read_text())
    assert record["gpu"] == "NVIDIA H100" and len(record["sha256"]) == 64


@pytest.mark.skipif(HAS_CUDA, reason="checks the messages of a machine without CUDA")
def test_missing_backends_name_the_alternatives():
    model = tiny("naive")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnavailable, match="tensorrt.*--engine onnxruntime"):
            create_engine("tensorrt", model=model)
    with pytest.raises(BackendUnavailable, match="onnxruntime-gpu"):
        create_engine("onnxruntime-cuda", model=model)
    with pytest.raises(BackendUnavailable, match="CUDA build of torch"):
        create_engine("torch-cuda", model=model)
    with pytest.raises(ValueError, match="unknown engine"):
        create_engine("tflite", model=model)


@pytest.mark.skipif(HAS_CUDA, reason="on a CUDA machine auto picks a GPU engine")
def test_auto_picks_onnxruntime_cpu_and_logs_why(caplog):
    with caplog.at_level(logging.INFO, logger="engines"):
        engine = create_engine("auto", model=tiny("naive"), window=8)
    assert engine.name == "onnxruntime" and engine.device == "cpu"
    text = caplog.text
    assert "chose onnxruntime" in text
    for skipped in ("tensorrt:", "onnxruntime-cuda:", "torch-cuda:"):
        assert skipped in text
    cpu = create_engine("auto", model=tiny("naive"), window=8, device="cpu")
    assert cpu.name == "onnxruntime"


@pytest.mark.skipif(HAS_CUDA, reason="on a CUDA machine auto picks a GPU engine")
def test_auto_for_whole_tracks_picks_the_parallel_form_of_streaming_models():
    """``tracks=True`` (``anonymize``): a streaming model gets PyTorch, whose ``run_tracks`` is
    the parallel form; a windowed model the same engine as without it."""
    streaming = create_engine("auto", model=tiny("tmr-stream"), window=None, tracks=True)
    assert streaming.name == "torch" and streaming.streaming
    assert create_engine("auto", model=tiny("tmr-stream"), window=None).name == "onnxruntime"
    assert create_engine("auto", model=tiny("naive"), window=8, tracks=True).name == "onnxruntime"


def test_unknown_option_and_bad_batch():
    with pytest.raises(TypeError, match="unknown option"):
        create_engine("onnxruntime", model=tiny("naive"), threadz=2)
    with pytest.raises(ValueError, match="max_batch"):
        create_engine("onnxruntime", model=tiny("naive"), max_batch=0)


def test_default_model_missing_is_a_clear_error():
    if default_checkpoint_path().is_file():
        engine = create_engine("onnxruntime")
        assert engine.describe()["model"] == "default"
    else:
        with pytest.raises(CheckpointError, match="default model is missing"):
            create_engine("onnxruntime")


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["tmr", "pmr", "dmr", "moon-resnet", "moon-ae", "naive"])
@pytest.mark.parametrize("graphs", [False, True])
def test_torch_cuda_matches_cpu(graphs, method):
    """Every method runs on CUDA within 1 mm of the CPU, and with ``cuda_graphs`` really
    replays captured graphs (no host→device copy inside a forward pass)."""
    model = tiny(method)  # each engine gets its own copy: a CUDA engine moves its module
    gpu = create_engine("torch-cuda", model=copy.deepcopy(model), window=None,
                        cuda_graphs=graphs)
    cpu = create_engine("torch", model=model, window=None)
    x = windows(5, model.window)
    gpu.warmup((1, 5))
    np.testing.assert_allclose(gpu.run(x), cpu.run(x), atol=1e-3)
    np.testing.assert_allclose(gpu.run(x[:1]), cpu.run(x[:1]), atol=1e-3)
    d = gpu.describe()
    assert d["cuda_graphs"] is graphs and "cuda_graph_error" not in d


# -- streaming models: step(frames, state) ---------------------------------------------------

STREAMING = [m for m in available() if "streaming" in getattr(model_class(m), "traits", ())]


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
@pytest.mark.parametrize("method", STREAMING)
def test_streaming_step_equals_the_parallel_forward(backend, method):
    model = tiny(method)
    engine = create_engine(backend, model=model, window=None)
    assert engine.streaming
    spec = engine.state_spec()
    assert "t" in spec and (method != "tmr-stream"
                            or set(spec) >= {"kv_k", "kv_v", "lstm_h", "lstm_c"})
    x = windows(3, 40, seed=1)
    state = engine.init_state(3)
    assert all(state[k].shape == (3, *shape) and state[k].dtype == np.float32
               for k, (shape, _) in spec.items())
    outs = []
    for t in range(x.shape[1]):
        y, state = engine.step(x[:, t], state)
        assert y.shape == (3, 25, 3) and y.dtype == np.float32
        outs.append(y)
    with torch.no_grad():
        reference = engine.source.module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.stack(outs, 1), reference, atol=1e-4)
    np.testing.assert_allclose(skeleton.bone_lengths(np.stack(outs, 1))[..., 1:],
                               np.broadcast_to(default_dummy().lengths[1:], (3, 40, 24)),
                               atol=1e-4)
    # run() on windows: each window a track from its first frame, the same function
    np.testing.assert_allclose(engine.run(x[:, :model.window]), reference[:, :model.window],
                               atol=1e-4)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_streaming_step_rejects_bad_frames_and_state(backend):
    engine = create_engine(backend, model=tiny("tmr-stream"), window=None)
    state = engine.init_state(2)
    frames = windows(2, 1)[:, 0]
    with pytest.raises(ValueError, match="frames"):
        engine.step(frames.astype(np.float64), state)
    bad = frames.copy()
    bad[1, 3, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        engine.step(bad, state)
    with pytest.raises(ValueError, match="state"):
        engine.step(frames, {k: v for k, v in state.items() if k != "kv_k"})
    with pytest.raises(ValueError, match="lstm_h"):
        engine.step(frames, {**state, "lstm_h": state["lstm_h"][:1]})


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")),
                    reason="torch.compile's CPU back end needs a C++ compiler")
def test_compile_compiles_the_step_a_streaming_engine_runs():
    """``compile=True`` once wrapped only ``forward``: a streaming engine stepped the eager
    ``module.step`` and compiled nothing. Now the step itself is compiled (dynamo traces at
    least one graph on the first call) and publishes what the eager step does."""
    from torch._dynamo.utils import counters

    model = tiny("tmr-stream")
    eager = create_engine("torch", model=model, window=None)
    compiled = create_engine("torch", model=copy.deepcopy(model), window=None, compile=True)
    assert compiled.describe()["compiled"]
    torch._dynamo.reset()
    counters.clear()
    x = windows(2, 12, seed=3)
    s1, s2 = eager.init_state(2), compiled.init_state(2)
    for t in range(x.shape[1]):
        y1, s1 = eager.step(x[:, t], s1)
        y2, s2 = compiled.step(x[:, t], s2)
        np.testing.assert_allclose(y2, y1, atol=1e-4)
    assert counters["stats"]["unique_graphs"] >= 1
    # a windowed model has no step: compiled, it runs its forward as before
    x = windows(2, 16, seed=4)
    model = tiny("naive")
    y = create_engine("torch", model=model, window=16, compile=True).run(x)
    np.testing.assert_allclose(y, create_engine("torch", model=model, window=16).run(x),
                               atol=1e-5)


def test_windowed_engine_has_no_step():
    engine = create_engine("onnxruntime", model=tiny("naive"), window=16)
    assert not engine.streaming
    with pytest.raises(EngineError, match="windowed"):
        engine.init_state(1)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", STREAMING)
@pytest.mark.parametrize("graphs", [False, True])
def test_torch_cuda_step_matches_cpu(graphs, method):
    """Every streaming method steps on CUDA as on the CPU. StreamTMR's step is captured and
    replayed as a CUDA graph; a step whose search picks its bodies on the host (a motion
    matcher's ``nonzero``) cannot be captured, and the engine says so and runs it eagerly."""
    model = tiny(method)
    cpu = create_engine("torch", model=model, window=None)
    gpu = create_engine("torch-cuda", model=copy.deepcopy(model), window=None,
                        cuda_graphs=graphs)
    x = windows(6, 30, seed=2)
    s1, s2 = cpu.init_state(6), gpu.init_state(6)
    for t in range(30):
        y1, s1 = cpu.step(x[:, t], s1)
        y2, s2 = gpu.step(x[:, t], s2)
        np.testing.assert_allclose(y2, y1, atol=1e-4)
    captured = gpu._step_graphs[6].graph is not None  # captured, then replayed
    assert gpu.cuda_graphs == captured
    blocker = graph_blocker(model)
    assert captured == (graphs and blocker is None)
    if graphs and blocker:
        assert gpu.describe()["cuda_graph_error"] == blocker


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("search", [{"search_leaves": 3}, {"search_leaf": 0}],
                         ids=["capped", "brute"])
def test_a_matcher_with_a_fixed_size_search_steps_as_a_cuda_graph(search):
    """On CUDA the capped and the brute-force matcher search every body, masked: the torch
    engine captures the step, replays it, and publishes the CPU's frames (bodies that search
    on different frames included)."""
    from streamtmr.models.motion_match import MotionMatching

    model = MotionMatching({**MotionMatching.presets["tiny"], **search}).eval()
    cpu = create_engine("torch", model=model, window=None)
    gpu = create_engine("torch-cuda", model=copy.deepcopy(model), window=None)
    x = windows(4, 40, seed=3)
    s1, s2 = cpu.init_state(4), gpu.init_state(4)
    for t in range(40):
        if t == 7:  # body 2 enters anew: it searches on other frames from now on
            fresh = cpu.init_state(1)
            s1 = {k: np.concatenate([v[:2], fresh[k], v[3:]]) for k, v in s1.items()}
            s2 = {k: np.concatenate([v[:2], fresh[k], v[3:]]) for k, v in s2.items()}
        y1, s1 = cpu.step(x[:, t], s1)
        y2, s2 = gpu.step(x[:, t], s2)
        np.testing.assert_allclose(y2, y1, atol=1e-4)
    assert gpu._step_graphs[4].graph is not None and "cuda_graph_error" not in gpu.describe()


def test_a_step_that_branches_on_the_host_declares_it_cannot_be_captured():
    """The torch engine leaves CUDA graphs off, up front and with the reason, for a model
    holding a motion-matching stage (its search runs only when a body searches), and only
    then."""
    assert graph_blocker(tiny("tmr-stream")) is None
    assert graph_blocker(tiny("naive")) is None
    reason = graph_blocker(tiny("motion_match"))
    assert reason and reason.startswith("MotionMatching: ")


class HostReads(TorchDispatchMode):
    """The operations of a step on a device that read host memory: a copy from the CPU, or a
    CPU tensor (not a 0-dim scalar) mixed with device tensors. CUDA-graph capture refuses a
    copy from pageable host memory. ``torch.tensor(data, device=...)`` copies without passing
    the dispatcher: :meth:`made` records those (the test wraps ``torch.tensor`` with it)."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def made(self, fn):
        def wrapped(*args, **kwargs):
            t = fn(*args, **kwargs)
            if t.device.type != "cpu":
                self.seen.append(f"{fn.__name__} on {t.device.type}")
            return t
        return wrapped

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = tree_flatten((args, kwargs))[0]
        tensors = [a for a in flat if isinstance(a, torch.Tensor)]
        on_host = [a.device.type == "cpu" and a.dim() > 0 for a in tensors]
        # a host tensor sent to a device (``_to_copy``, or ``to`` in inference mode)
        sent = bool(tensors) and tensors[0].device.type == "cpu" and any(
            isinstance(a, torch.device) and a.type != "cpu" for a in flat)
        if (any(on_host) and not all(on_host)) or sent:
            self.seen.append(str(func))
        return func(*args, **kwargs)


@pytest.mark.parametrize("name", ["tmr-stream", "capped", "brute", "matcher"])
def test_after_its_first_call_a_step_on_a_device_reads_nothing_from_the_host(name, monkeypatch):
    """What CUDA-graph capture needs of a step, checked without a GPU. On a device that is not
    the CPU ('meta' here: shapes only, no data, so no host wait can run either), after one
    warm-up call (constants are copied to the device once, then cached) the step copies
    nothing from the host: the capture that follows the torch engine's warm-up succeeds. The
    2026-12-04 lease's matcher capture failed on such a copy (``torch.tensor(2**62,
    device=...)`` in the search), which only a GPU showed."""
    from streamtmr.models.motion_match import MotionMatching

    search = {"capped": {"search_leaves": 3}, "brute": {"search_leaf": 0}}
    if name in search:
        model = MotionMatching({**MotionMatching.presets["tiny"], **search[name]})
    elif name == "matcher":
        model = load_checkpoint(shipped_path("matcher"))
    else:
        model = tiny(name)
    assert graph_blocker(model) is None
    module = model.eval().for_dummy(
        torch.tensor(default_dummy().lengths, dtype=torch.float32)).to("meta")
    state = module.init_state(3)
    frames = torch.randn(3, 25, 3, device="meta")
    reads = HostReads()
    with torch.inference_mode():
        _, state = module.step(frames, state)                       # the warm-up
        for fn in ("tensor", "as_tensor"):
            monkeypatch.setattr(torch, fn, reads.made(getattr(torch, fn)))
        with reads:
            y, state = module.step(frames, state)
    assert reads.seen == [] and y.shape == (3, 25, 3) and y.device.type == "meta"
    # the detector sees the copies it is for
    with reads, torch.inference_mode():
        torch.tensor(2**62, device="meta")
        torch.ones(3).to("meta")
    assert reads.seen == ["tensor on meta", "aten.to.dtype_layout"]


def test_tensorrt_step_plan_binds_every_tensor_of_the_step_graph(tmp_path):
    """The TensorRT engine's tensor table (profile and buffers) is the exported step graph's
    inputs and outputs, so a step plan binds every state tensor (runs on a GPU above)."""
    import onnx

    from engines.tensorrt_engine import io_shapes
    source = resolve_source(tiny("tmr-stream"), None, None)
    proto = onnx.load(str(export_onnx(source, tmp_path / "step.onnx")))
    shapes = io_shapes(source.window, source.state_spec)
    inputs = {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim[1:])
              for v in proto.graph.input}
    assert {k: v for k, v in shapes.items() if k in inputs} == inputs
    assert set(shapes) == set(inputs) | {v.name for v in proto.graph.output}
    assert io_shapes(16, None) == {"windows": (16, 25, 3), "anonymized": (16, 25, 3)}
