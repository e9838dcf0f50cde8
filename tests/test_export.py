"""ONNX export: checker, metadata and parity with PyTorch for every registered method."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import tiny

from engines import create_engine, resolve_source
from engines.onnx_export import (
    FRAMES,
    INPUT,
    OUTPUT,
    STATE_IN,
    STATE_OUT,
    export_onnx,
    max_abs_error,
    read_metadata,
)
from streamtmr import cli
from streamtmr.models.checkpoint import default_checkpoint_path, save_checkpoint
from streamtmr.models.registry import available, model_class

REAL = Path(__file__).resolve().parents[2] / "shared/data/real"
NTU = REAL / "ntu_samples"
STOCHASTIC = {"noise"}
STREAMING = [m for m in available() if "streaming" in getattr(model_class(m), "traits", ())]


pytestmark = pytest.mark.usefixtures("isolated_cache")


def random_windows(batch: int, T: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 0.3, (batch, T, 25, 3)).astype(np.float32)
    x[..., 2] += 3.0
    return x


def real_windows(T: int, per_file: int = 2) -> np.ndarray:
    """Windows of actor 1 from the NTU samples (skip when the data or reader is missing)."""
    ntu = pytest.importorskip("streamtmr.data.ntu", reason="NTU reader not available")
    files = sorted(NTU.glob("*.skeleton"))
    if not files:
        pytest.skip(f"no NTU samples in {NTU}")
    out = []
    for f in files:
        seq = ntu.read_skeleton(f)
        joints = seq.joints[seq.present[:, 0], 0]
        for s in np.linspace(0, max(len(joints) - T, 0), per_file).astype(int):
            w = joints[s:s + T]
            w = np.concatenate([w, np.repeat(w[-1:], T - len(w), 0)]) if len(w) < T else w
            out.append(w)
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


@pytest.mark.parametrize("method", [m for m in available() if m not in STREAMING])
def test_export_checker_and_metadata(method, tmp_path):
    source = resolve_source(tiny(method), None, None)
    path = export_onnx(source, tmp_path / f"{method}.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == [INPUT]
    assert [o.name for o in proto.graph.output] == [OUTPUT]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [
        source.window, 25, 3]
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    meta = read_metadata(path)
    assert meta["method"] == method and meta["window"] == source.window
    assert meta["config"] == source.config
    np.testing.assert_allclose(meta["dummy"]["lengths"], source.dummy.lengths, atol=1e-7)


@pytest.mark.parametrize("method", [m for m in available() if m not in STOCHASTIC])
def test_parity_random_and_real(method, tmp_path):
    source = resolve_source(tiny(method), None, None)
    path = export_onnx(source, tmp_path / f"{method}.onnx")
    for batch in (1, 3, 8):  # the batch axis is dynamic
        assert max_abs_error(source, path, random_windows(batch, source.window, batch)) <= 1e-4
    assert max_abs_error(source, path, real_windows(source.window)) <= 1e-4


@pytest.mark.parametrize("method", STREAMING)
def test_streaming_export_is_the_step_graph(method, tmp_path):
    source = resolve_source(tiny(method), None, None)
    assert source.streaming
    path = export_onnx(source, tmp_path / f"{method}.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    names = list(source.state_spec)
    assert [i.name for i in proto.graph.input] == [FRAMES, *(STATE_IN + k for k in names)]
    assert [o.name for o in proto.graph.output] == [OUTPUT, *(STATE_OUT + k for k in names)]
    for value in (*proto.graph.input, *proto.graph.output):  # batch axis 0 dynamic everywhere
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = read_metadata(path)
    assert meta["streaming"] == "1" and meta["state_spec"] == source.state_spec
    # the exported file alone is a streaming source, and its steps are PyTorch's
    loaded = resolve_source(path, None, None)
    assert loaded.streaming and loaded.state_spec == source.state_spec
    assert max_abs_error(source, path, real_windows(40, per_file=1)) <= 1e-5


def test_export_cli_streaming_model(tmp_path, capsys):
    method = "tmr-stream"
    ckpt = save_checkpoint(tmp_path / "stream.safetensors", tiny(method))
    out = tmp_path / "stream.onnx"
    assert cli.main(["export", "--format", "onnx", "--out", str(out), "--model", str(ckpt)]) == 0
    engine = create_engine("onnxruntime", model=out, window=None)
    reference = create_engine("torch", model=ckpt, window=None)
    assert engine.streaming and reference.streaming
    x = random_windows(3, 12)
    s1, s2 = engine.init_state(3), reference.init_state(3)
    for t in range(12):
        y1, s1 = engine.step(x[:, t], s1)
        y2, s2 = reference.step(x[:, t], s2)
        np.testing.assert_allclose(y1, y2, atol=1e-5)


def test_median_symbolic_matches_torch(tmp_path):
    """The registered aten::median symbolic gives torch's lower median on even lengths."""
    source = resolve_source(tiny("naive"), None, 16)
    path = export_onnx(source, tmp_path / "naive16.onnx")
    x = random_windows(4, 16, seed=3)
    assert max_abs_error(source, path, x) <= 1e-5


def test_export_cli_writes_a_model_the_engine_loads(tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "tmr.safetensors", tiny("tmr"))
    out = tmp_path / "tmr.onnx"
    assert cli.main(["export", "--format", "onnx", "--out", str(out), "--model", str(ckpt)]) == 0
    assert "max |onnx - torch|" in capsys.readouterr().out
    engine = create_engine("onnxruntime", model=out, window=None)
    reference = create_engine("torch", model=ckpt, window=None)
    assert engine.window == reference.window == tiny("tmr").window
    x = random_windows(5, engine.window)
    np.testing.assert_allclose(engine.run(x), reference.run(x), atol=1e-4)
    assert engine.describe()["method"] == "tmr"


def test_export_cli_window_and_errors(tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "naive.safetensors", tiny("naive"))
    out = tmp_path / "n24.onnx"
    assert cli.main(["export", "--out", str(out), "--model", str(ckpt), "--window", "24"]) == 0
    assert read_metadata(out)["window"] == 24
    # an .onnx cannot be exported again, and tensorrt names what to use without the package
    assert cli.main(["export", "--out", str(tmp_path / "x.onnx"), "--model", str(out)]) == 2
    assert "already an ONNX model" in capsys.readouterr().err
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        code = cli.main(["export", "--format", "tensorrt", "--out", str(tmp_path / "m.plan"),
                         "--model", str(ckpt)])
        assert code == 2
        err = capsys.readouterr().err
        assert "tensorrt" in err and "--engine onnxruntime" in err


def test_export_cli_default_model(tmp_path, capsys):
    out = tmp_path / "default.onnx"
    code = cli.main(["export", "--format", "onnx", "--out", str(out)])
    if default_checkpoint_path().is_file():
        assert code == 0 and read_metadata(out)["window"] >= 1
    else:
        assert code == 2
        assert "default model is missing" in capsys.readouterr().err
