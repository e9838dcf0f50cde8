"""Loss library: disentanglement, reconstruction and physical plausibility (pure functions)."""

from streamtmr.losses.disentangle import (
    action_ce,
    cross_correlation_mi,
    entropy_gap,
    info_nce,
    orthogonality,
    subspace_orthogonality,
)
from streamtmr.losses.physical import (
    JOINT_ANGLE_LIMITS,
    acceleration,
    angular_momentum,
    foot_contacts,
    foot_skating,
    joint_angle_validity,
    joint_angle_violation,
    joint_angles,
    velocity_frechet,
    velocity_mmd,
)
from streamtmr.losses.reconstruction import (
    bone_length_loss,
    cross_reconstruction,
    end_effector_mse,
    latent_consistency,
    mse,
    smoothness,
    triplet,
    velocity_loss,
)

__all__ = [
    "JOINT_ANGLE_LIMITS", "acceleration", "action_ce", "angular_momentum",
    "bone_length_loss", "cross_correlation_mi", "cross_reconstruction", "end_effector_mse",
    "entropy_gap", "foot_contacts", "foot_skating", "info_nce",
    "joint_angle_validity", "joint_angle_violation", "joint_angles", "latent_consistency", "mse",
    "orthogonality", "smoothness", "subspace_orthogonality", "triplet", "velocity_frechet",
    "velocity_loss", "velocity_mmd",
]
