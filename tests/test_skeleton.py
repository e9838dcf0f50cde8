import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from streamtmr import skeleton as S

finite = st.floats(-3, 3, allow_nan=False, allow_infinity=False, width=32)


def test_topology():
    assert len(S.JOINT_NAMES) == 25 and len(S.PARENTS) == 25
    assert S.PARENTS == (-1, 0, 20, 2, 20, 4, 5, 6, 20, 8, 9, 10, 0, 12, 13, 14, 0, 16, 17, 18, 1,
                         7, 6, 11, 10)
    assert len(S.BONES) == 24
    pos = {j: i for i, j in enumerate(S.TOPO_ORDER)}
    assert all(pos[p] < pos[c] for p, c in S.BONES)
    # ancestor matrix: the chain from root to Head is SpineMid, SpineShoulder, Neck, Head
    head_chain = np.nonzero(S.ANCESTORS[S.JOINT["Head"]])[0].tolist()
    assert head_chain == sorted([1, 20, 2, 3])
    assert S.JOINT_NAMES[S.MIRROR[S.JOINT["HandTipLeft"]]] == "HandTipRight"
    assert np.allclose(S.ADJACENCY, S.ADJACENCY.T)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float32, (3, 25, 3), elements=finite))
def test_fk_roundtrip_numpy(joints):
    lengths = S.bone_lengths(joints)
    dirs = S.bone_directions(joints)
    # zero-length bones have no direction; the round trip holds for all others
    out = S.forward_kinematics(joints[..., 0, :], dirs, lengths)
    assert np.abs(out - joints).max() < 1e-5 * max(1.0, float(np.abs(joints).max()))


def test_fk_roundtrip_torch_double():
    x = torch.randn(4, 7, 25, 3, dtype=torch.float64)
    out = S.forward_kinematics(x[..., 0, :], S.bone_directions(x), S.bone_lengths(x))
    assert (out - x).abs().max() < 1e-6


def test_fk_gives_exact_lengths_and_broadcasts():
    x = torch.randn(2, 5, 25, 3)
    target = torch.rand(25) * 0.3 + 0.05
    y = S.set_bone_lengths(x, target)
    assert y.shape == x.shape
    got = S.bone_lengths(y)[..., 1:]
    assert torch.allclose(got, target[1:].expand_as(got), atol=1e-5)
    assert torch.equal(y[..., 0, :], x[..., 0, :])


@settings(max_examples=30, deadline=None)
@given(arrays(np.float64, (6, 25, 3), elements=st.floats(-3, 3, allow_nan=False)),
       st.integers(0, 5))
def test_canonicalisation_invertible(seq, ref):
    canon, rot, origin = S.canonicalize(seq, ref_frame=ref)
    assert np.abs(S.from_canonical(canon, rot, origin) - seq).max() < 1e-9
    assert np.allclose(canon[ref, S.ROOT], 0, atol=1e-9)
    hip = canon[ref, S.JOINT["HipRight"]] - canon[ref, S.JOINT["HipLeft"]]
    if np.hypot(hip[0], hip[2]) > 1e-6:  # hips face +X about the vertical
        assert abs(hip[2]) < 1e-8 and hip[0] > 0
    # rotation about Y only: heights unchanged relative to the root
    assert np.allclose(canon[..., 1], seq[..., 1] - seq[ref, S.ROOT, 1], atol=1e-9)


def test_numpy_torch_agree():
    x = np.random.default_rng(0).normal(size=(2, 8, 25, 3)).astype(np.float32)
    c_np, r_np, o_np = S.canonicalize(x)
    c_t, r_t, o_t = S.canonicalize(torch.from_numpy(x))
    assert np.allclose(c_np, c_t.numpy(), atol=1e-5)
    assert np.allclose(S.bone_directions(x), S.bone_directions(torch.from_numpy(x)).numpy(),
                       atol=1e-6)


def test_rescale_root():
    x = np.zeros((5, 25, 3), np.float32)
    x[:, :, 0] = np.arange(5)[:, None]  # the whole body walks 1 m per frame along X
    y = S.rescale_root(x, np.float32(0.5))
    assert np.allclose(y[:, 0, 0], np.arange(5) * 0.5)
    assert np.allclose(y - y[:, :1], x - x[:, :1])  # limb pose relative to root unchanged


def test_kinect_v1_mapping():
    v1 = np.random.default_rng(1).normal(size=(3, 20, 3)).astype(np.float32)
    v2 = S.from_kinect_v1(v1)
    assert v2.shape == (3, 25, 3)
    assert np.array_equal(v2[:, S.JOINT["SpineBase"]], v1[:, 0])
    assert np.array_equal(v2[:, S.JOINT["SpineShoulder"]], v1[:, 2])
    assert np.array_equal(v2[:, 4:20], v1[:, 4:20])
    ss, head = v2[:, S.JOINT["SpineShoulder"]], v2[:, S.JOINT["Head"]]
    assert np.allclose(v2[:, S.JOINT["Neck"]], ss + S.NECK_RATIO * (head - ss))
    with pytest.raises(ValueError, match="20, 3"):
        S.from_kinect_v1(np.zeros((3, 25, 3)))
    # what a v1 sensor reports of a v2 body: the same 20 measures, the rest derived again
    assert np.array_equal(S.to_kinect_v1(v2), v1)
    body = np.random.default_rng(3).normal(size=(2, 25, 3)).astype(np.float32)
    again = S.from_kinect_v1(S.to_kinect_v1(body))
    derived = [S.JOINT[n] for n in ("Neck", "HandTipLeft", "ThumbLeft", "HandTipRight",
                                    "ThumbRight")]
    kept = [j for j in range(25) if j not in derived]
    assert np.array_equal(again[:, kept], body[:, kept])
    assert not np.allclose(again[:, derived], body[:, derived])
    with pytest.raises(ValueError, match="25, 3"):
        S.to_kinect_v1(v1)


def test_msr_action3d_mapping():
    v1 = np.random.default_rng(2).normal(size=(20, 3))
    msr = v1[[S.KINECT_V1_NAMES.index(n) for n in S.MSR_ACTION3D_ORDER]]
    assert np.allclose(S.from_msr_action3d(msr), S.from_kinect_v1(v1))


def test_azure_mapping_units_and_axes():
    az = np.zeros((32, 3), np.float32)
    az[S.AZURE_KINECT_NAMES.index("PELVIS")] = [100.0, -200.0, 2000.0]  # mm, Y down
    az[S.AZURE_KINECT_NAMES.index("HEAD")] = [100.0, -900.0, 2000.0]
    v2 = S.from_azure_kinect(az)
    assert np.allclose(v2[S.JOINT["SpineBase"]], [-0.1, 0.2, 2.0])
    assert v2[S.JOINT["Head"], 1] > v2[S.JOINT["SpineBase"], 1]  # head above pelvis: Y up
    assert np.allclose(v2[S.JOINT["Neck"]], (v2[S.JOINT["SpineShoulder"]] + v2[S.JOINT["Head"]])
                       / 2)


def test_mirror_is_involution():
    x = torch.randn(3, 25, 3)
    assert torch.allclose(S.mirror(S.mirror(x)), x)
    assert torch.allclose(S.bone_lengths(S.mirror(x)), S.bone_lengths(x)[..., list(S.MIRROR)])


def test_device_constants_are_created_once_and_safe_for_autograd():
    """Joint-index and matrix constants are cached per device (no host→device copy per call,
    which CUDA-graph capture forbids), and a constant first made under inference_mode can still
    be saved for backward by a later training step."""
    S._DEVICE_CONSTANTS.clear()
    x = torch.randn(2, 4, 25, 3)
    with torch.inference_mode():
        S.bone_lengths(x)
        S.leg_length(S.bone_lengths(x[:, 0]))
    n = len(S._DEVICE_CONSTANTS)
    assert n >= 2
    y = x.clone().requires_grad_(True)
    loss = S.leg_length(S.bone_lengths(y)).sum() + S.mirror(y).sum()
    loss.backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()
    S.bone_lengths(x)
    assert len(S._DEVICE_CONSTANTS) == n + 2  # mirror's index and sign, nothing more
    xn = x.numpy()
    np.testing.assert_allclose(S.bone_vectors(xn), S.bone_vectors(x).numpy(),
                               atol=1e-6)
    np.testing.assert_allclose(S.mirror(xn), S.mirror(x).numpy(), atol=1e-6)
    np.testing.assert_allclose(S.chain_length(S.bone_lengths(xn), (3, 4)),
                               S.chain_length(S.bone_lengths(x), (3, 4)).numpy(),
                               atol=1e-6)
