"""FP16 against the bone check, tested around TensorRT (not installed on the CPU machines):
an fp16 plan's output rounded near 3 m fails the 1 mm bone check on many frames; the engine's
float32 rebuild (root + directions + forward kinematics) passes it on every frame."""

from __future__ import annotations

import numpy as np

from engines import create_engine
from engines.tensorrt_engine import fp32_pose
from streamtmr import skeleton
from streamtmr.leak_guard import calibration_clip


def test_fp16_rounded_output_fails_bone_check_fp32_rebuild_passes():
    eng = create_engine("onnxruntime", model="default", window=64)
    clip = calibration_clip()  # camera space, ~3 m from the sensor
    y = eng.run(np.ascontiguousarray(clip[:, :64]))
    lengths = eng.dummy_lengths

    def over_1mm(j):
        err = np.abs(skeleton.bone_lengths(j)[..., 1:] - lengths[1:]).max(-1)
        return float((err > 1e-3).mean())

    assert over_1mm(y) == 0.0
    half = y.astype(np.float16).astype(np.float32)  # what an fp16 plan returns
    assert over_1mm(half) > 0.2
    rebuilt = fp32_pose(half, lengths)
    assert rebuilt.dtype == np.float32 and over_1mm(rebuilt) == 0.0
    assert np.abs(rebuilt - y).max() < 0.01  # within fp16 resolution of the fp32 output


class _Tensor:
    def __init__(self, name: str, dtype: str = "float32"):
        self.name, self.dtype = name, dtype


class _Layer:
    """The parts of a TensorRT ``ILayer`` that the precision pins use."""

    def __init__(self, ins: list[_Tensor | None], outs: list[_Tensor]):
        self.ins, self.outs = ins, outs
        self.precision, self.output_types = None, {}

    num_inputs = property(lambda self: len(self.ins))
    num_outputs = property(lambda self: len(self.outs))

    def get_input(self, j):
        return self.ins[j]

    def get_output(self, j):
        return self.outs[j]

    def set_output_type(self, j, dtype):
        self.output_types[j] = dtype


class _Network:
    def __init__(self, layers: list[_Layer]):
        self.layers = layers

    num_layers = property(lambda self: len(self.layers))

    def get_layer(self, i):
        return self.layers[i]


def _step_graph() -> _Network:
    """A step graph in miniature: a counter (state t), a key ring (state kv) whose new entry is
    computed from the frame by heavy layers, and the output read through the ring."""
    t_in, kv_in, frames = _Tensor("state_in.t"), _Tensor("state_in.kv"), _Tensor("frames")
    t_int, t_next, kv_old, h = _Tensor("t_int", "int64"), _Tensor("state_out.t"), \
        _Tensor("kv_old"), _Tensor("h")
    y, kv_out, out = _Tensor("y"), _Tensor("state_out.kv"), _Tensor("anonymized")
    return _Network([
        _Layer([t_in], [t_int]),              # 0 cast to int64 (the counter)
        _Layer([t_int], [t_next]),            # 1 add one, cast back
        _Layer([frames, None], [h]),          # 2 heavy: the frame's embedding (optional input)
        _Layer([kv_in], [kv_old]),            # 3 slice: the ring without its oldest entry
        _Layer([kv_old, h], [kv_out]),        # 4 concat: the new ring
        _Layer([h, kv_in], [y]),              # 5 heavy: attention over the ring
        _Layer([y], [out]),                   # 6 heavy: the decoder
    ])


def test_an_fp16_plan_pins_each_state_entrys_own_update_path_and_nothing_heavy():
    """Only the layers reachable from state_in.K and reaching state_out.K run in float32: the
    counter's cast and add, the ring's slice and concat; the embedding, the attention and the
    decoder stay fp16. Float inputs and outputs are pinned, the int64 ones are left alone."""
    import types

    from engines.tensorrt_engine import pin_state_updates, state_update_layers

    net = _step_graph()
    assert state_update_layers(net, ["t"]) == [0, 1]
    assert state_update_layers(net, ["kv"]) == [3, 4]
    assert state_update_layers(net, ["t", "kv", "absent"]) == [0, 1, 3, 4]
    flags = []
    trt = types.SimpleNamespace(float32="float32", float16="float16",
                                BuilderFlag=types.SimpleNamespace(OBEY_PRECISION_CONSTRAINTS="obey"))
    config = types.SimpleNamespace(set_flag=flags.append)
    assert pin_state_updates(trt, net, config, {"t": (1,), "kv": (4, 8)}) == 4
    assert [L.precision for L in net.layers] == ["float32", None, None, "float32", "float32",
                                                 None, None]  # layer 1 reads an int64
    assert [L.output_types for L in net.layers] == [{}, {0: "float32"}, {}, {0: "float32"},
                                                    {0: "float32"}, {}, {}]
    assert flags == ["obey"]


def test_motion_matching_and_cascades_holding_it_ask_for_fp32_plans():
    """A motion matcher's search (scores on a 1e-3 grid, frame indices in the hundreds of
    thousands) is not float16-safe: it and any cascade with it get fp32 plans; others fp16."""
    import types

    import torch

    from engines.tensorrt_engine import fp16_allowed
    from streamtmr.models.cascade import CascadeDummy
    from streamtmr.models.motion_match import MotionMatchingDummy

    class Stage(torch.nn.Module):
        def state_spec(self):
            return {"t": ((1,), torch.float32)}

    matcher = Stage()
    matcher.fp16_plan = MotionMatchingDummy.fp16_plan
    assert MotionMatchingDummy.fp16_plan is False
    assert fp16_allowed(types.SimpleNamespace(module=Stage()))
    assert fp16_allowed(types.SimpleNamespace(module=None))  # a given plan keeps its record
    assert fp16_allowed(types.SimpleNamespace(module=CascadeDummy([Stage(), Stage()])))
    assert not fp16_allowed(types.SimpleNamespace(module=CascadeDummy([Stage(), matcher])))
    assert not fp16_allowed(types.SimpleNamespace(module=matcher))
