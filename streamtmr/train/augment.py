"""Style augmentation: make the source look like someone else, keep the action.

An anonymizer's output should not change when a different person performs the same motion. The
identity adversaries of DisentangledTMR learn that from the 40 people they see, and generalise
poorly to new ones (docs/results.md). Augmentation teaches the same invariance for every
person the perturbations can make up: each training window gets a random habitual posture, a
random movement amplitude, random proportions and a random timing of each limb, while the
reconstruction target stays the neutral performance. The perturbations are generic skeleton
geometry, not SynthKinect's style model, so what they teach is not tied to SynthKinect
(docs/training.md measures the effect on SynthKinect's unseen people and on the real UTKinect
recordings).
"""

from __future__ import annotations

import torch

from streamtmr import skeleton


def style_jitter(x: torch.Tensor, posture: float = 0.0, amplitude: float = 0.0,
                 bones: float = 0.0, lag: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Re-pose windows ``x [B, T, 25, 3]`` as a random other person would hold them.

    Per window and bone, constant over the window:

    * ``posture``: a random offset ``N(0, posture²)`` added to the bone's unit direction (a
      habitual lean, stoop or arm carry; 0.07 ≈ 4°),
    * ``amplitude``: the bone's motion around its mean direction in the window scaled by
      ``exp(N(0, amplitude²))`` (someone who moves more or less),
    * ``bones``: the bone's length scaled by ``N(1, bones²)``, clipped to [0.5, 1.5],
    * ``lag``: the bone's motion delayed (or advanced) by ``N(0, lag²)`` frames, fractional
      delays linearly interpolated, the window's first and last direction held beyond its ends
      (a person whose elbow follows the shoulder later, or whose head leads).

    The root trajectory is kept; joints are rebuilt by forward kinematics. All four at 0 return
    ``x`` unchanged.
    """
    if x.dim() != 4 or x.shape[-2:] != (skeleton.NUM_JOINTS, 3):
        raise ValueError(f"style_jitter: expected [B, T, 25, 3], got {tuple(x.shape)}")
    if min(posture, amplitude, bones, lag) < 0:
        raise ValueError(f"style_jitter: standard deviations must be >= 0, got posture "
                         f"{posture}, amplitude {amplitude}, bones {bones}, lag {lag}")
    if not (posture or amplitude or bones or lag):
        return x
    b, J = x.shape[0], skeleton.NUM_JOINTS

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=x.dtype).to(x.device)

    dirs = skeleton.bone_directions(x)
    lengths = skeleton.bone_lengths(x)
    if lag:
        dirs = delayed(dirs, lag * randn(b, 1, J, 1))
    if amplitude:
        mean = dirs.mean(dim=1, keepdim=True)
        dirs = mean + torch.exp(amplitude * randn(b, 1, J, 1)) * (dirs - mean)
    if posture:
        dirs = dirs + posture * randn(b, 1, J, 3)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(skeleton.EPS)
    if bones:
        lengths = lengths * (1.0 + bones * randn(b, 1, J)).clamp(0.5, 1.5)
    return skeleton.forward_kinematics(x[..., skeleton.ROOT, :], dirs, lengths)


def delayed(seq: torch.Tensor, delay: torch.Tensor) -> torch.Tensor:
    """``seq [B, T, J, C]`` with every ``(b, j)`` series read ``delay [B, 1, J, 1]`` frames
    earlier (a later motion; negative: sooner), linearly interpolated between frames and held
    at the window's first and last frames."""
    t = seq.shape[1]
    src = (torch.arange(t, dtype=seq.dtype, device=seq.device)[None, :, None, None]
           - delay).clamp(0, t - 1)                                          # [B, T, J, 1]
    k = src.floor().clamp(max=max(t - 2, 0)).long()
    w = src - k
    nxt = (k + 1).clamp(max=t - 1)

    def pick(index: torch.Tensor) -> torch.Tensor:
        return seq.gather(1, index.expand(-1, -1, -1, seq.shape[-1]))

    return pick(k) * (1 - w) + pick(nxt) * w


__all__ = ["delayed", "style_jitter"]
