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
