"""An action prior for motion matching: which kind of motion the input performs, causally.

Motion matching picks the database frame nearest to a few features of the input: key joints
relative to the root and their velocities. Where two kinds of motion share a posture for a
moment (clapping and eating both bring the hands before the chest; brushing one's hair and
saluting both raise the right hand to the head), the nearest frame may come from the wrong
kind, and the output then performs another action than the person. The matcher's own features
over the last seconds tell the kinds apart: a small recurrent recognizer reads them frame by
frame and gives a class posterior ``p``; every database frame carries the one-hot code of the
action it was rendered from (zero for a motion the recognizer does not know), and the search
adds ``w²·|p − code|²`` to its cost. Written as ``w·p`` appended to the query and ``w·code`` to
the database features, this is the same nearest-neighbour search in a few more dimensions, so
the exact search tree serves it unchanged.

The recognizer reads only the features the matcher computes from its input anyway: in a
cascade, the first stage's output. It is trained on what it will read: the first stage's
output for the store's ``anonymizer_train`` people (every camera and repetition), never an
evaluated person.

    ActionPrior(features, classes, hidden)   LSTM → linear → softmax, one step per frame
    train_prior(seqs, labels, classes)       fit one to labelled sequences of matcher features

The matcher trains its own (:func:`streamtmr.models.motion_match.fit_action_prior`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from streamtmr.data.windows import pad_to
from streamtmr.models.tmr_stream import lstm_cell

log = logging.getLogger(__name__)

#: Settings of a matcher's ``action_prior`` (``None`` or absent: no prior).
PRIOR_DEFAULTS: dict[str, Any] = {
    "classes": [],      # action names the recognizer tells apart (database frames of others: 0)
    "weight": 1.0,      # w: a confident wrong class costs 2·w² (standardised cost units)
    "hidden": 64,       # LSTM width
    "epochs": 20,
    "seed": 0,
    "stage": None,      # what the recognizer was trained on: the first stage's name and sha256
    # Train on a second copy of every clip replayed as real streams differ from the store's:
    # at another speed (0.7–1.4×) and with frames the sensor dropped and the player
    # interpolated (keeping one frame in 1–6), so that the posterior does not hinge on the
    # store's exact timing.
    "augment": False,
}


def resample(clip: np.ndarray, times: np.ndarray) -> np.ndarray:
    """``clip [T, ...]`` linearly interpolated at fractional frame ``times`` (in [0, T−1])."""
    i0 = np.clip(np.floor(times).astype(np.int64), 0, len(clip) - 1)
    i1 = np.minimum(i0 + 1, len(clip) - 1)
    w = (times - i0).reshape(-1, *[1] * (clip.ndim - 1)).astype(clip.dtype)
    return (1 - w) * clip[i0] + w * clip[i1]


def replayed(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``clip`` at a random speed (0.7–1.4×), then with a random share of its frames dropped
    and interpolated back (one frame kept in k = 1…6, from a random first frame)."""
    speed = float(rng.uniform(0.7, 1.4))
    n = max(2, int(round((len(clip) - 1) / speed)) + 1)
    clip = resample(clip, np.linspace(0, len(clip) - 1, n))
    k = int(rng.integers(1, 7))
    kept = np.arange(int(rng.integers(0, k)), n, k)
    if len(kept) < 2:
        return clip
    t = np.arange(kept[0], kept[-1] + 1, dtype=np.float64)
    return resample(clip[kept], (t - kept[0]) / k)


class ActionPrior(nn.Module):
    """Causal recognizer: matcher features ``[B, T, F]`` → class logits ``[B, T, C]``."""

    def __init__(self, features: int, classes: int, hidden: int = 64):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(seq)[0])

    def step(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, first: torch.Tensor):
        """One frame ``x [B, F]`` → (posterior ``[B, C]``, h, c); ``first [B]`` restarts a
        track (its state zeroed)."""
        keep = (~first)[:, None].to(x.dtype)
        h, c = lstm_cell(self.lstm, x, h * keep, c * keep)
        return torch.softmax(self.head(h), -1), h, c


def class_codes(labels: Sequence[str], classes: Sequence[str]) -> torch.Tensor:
    """One-hot ``[N, C]`` of each frame's action among ``classes`` (all zero for another)."""
    index = {name: i for i, name in enumerate(classes)}
    idx = torch.tensor([index.get(name, len(classes)) for name in labels], dtype=torch.int64)
    return F.one_hot(idx, len(classes) + 1)[:, :-1].to(torch.float32)   # unknown: all zero


def fit_per_frame(model: nn.Module, x: torch.Tensor, valid: torch.Tensor,
                  frame_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                  epochs: int, seed: int, batch: int, lr: float, name: str) -> nn.Module:
    """Train a causal sequence model on end-padded sequences ``x [N, T, F]`` whose frames
    ``valid [N, T]`` are real: AdamW under a one-cycle schedule, shuffled batches of ``batch``
    sequences, ``frame_loss(output, idx, mask)`` the mean loss over the valid frames ``mask`` of
    the sequences ``idx`` (every frame counts: the matcher reads the model at every one).
    Logs the frame-weighted loss of every epoch under ``name``; returns the model in eval
    mode."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    t0 = time.time()
    for epoch in range(epochs):
        total, frames = 0.0, 0
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            m = valid[idx]
            loss = frame_loss(model(x[idx]), idx, m)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * int(m.sum())
            frames += int(m.sum())
        log.info("%s epoch %d: loss %.3f (%.0f s)", name, epoch + 1, total / frames,
                 time.time() - t0)
    return model.eval()


def train_prior(seqs: list[torch.Tensor], labels: Sequence[int], classes: int, hidden: int = 64,
                epochs: int = 20, seed: int = 0, batch: int = 64, lr: float = 3e-3
                ) -> ActionPrior:
    """Fit an :class:`ActionPrior` to sequences of matcher features ``[T_i, F]``, every frame
    labelled with its sequence's class (cross-entropy over every frame: the posterior must be
    right as early as the motion allows, since the matcher reads it at every frame)."""
    torch.manual_seed(seed)
    prior = ActionPrior(seqs[0].shape[1], classes, hidden)
    lengths = torch.tensor([len(s) for s in seqs])
    x = nn.utils.rnn.pad_sequence(seqs, batch_first=True)               # [N, T, F]
    valid = torch.arange(x.shape[1])[None] < lengths[:, None]            # [N, T]
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)

    def loss(logits: torch.Tensor, idx: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits[m], y[idx][:, None].expand_as(m)[m])

    return fit_per_frame(prior, x, valid, loss, epochs, seed, batch, lr, "action prior")


@torch.no_grad()
def frame_accuracy(prior: ActionPrior, seqs: list[torch.Tensor], labels: Sequence[int],
                   batch: int = 256) -> float:
    """Share of all frames of ``seqs`` whose posterior's top class is the sequence's label."""
    hits = frames = 0
    for i in range(0, len(seqs), batch):
        part = seqs[i:i + batch]
        pred = prior(nn.utils.rnn.pad_sequence(part, batch_first=True)).argmax(-1)
        valid = torch.arange(pred.shape[1])[None] < torch.tensor([len(s) for s in part])[:, None]
        y = torch.as_tensor(np.asarray(labels[i:i + batch]), dtype=torch.int64)[:, None]
        hits += int(((pred == y) & valid).sum())
        frames += int(valid.sum())
    return hits / frames


@torch.no_grad()
def stage_outputs(stage: torch.nn.Module, clips: list[np.ndarray], batch: int = 64
                  ) -> list[np.ndarray]:
    """A streaming stage's output for each clip (a track from its first frame; clips of a
    batch are end-padded with their last frame, which a causal stage never reads early)."""
    out = []
    for i in range(0, len(clips), batch):
        part = clips[i:i + batch]
        T = max(len(c) for c in part)
        y = stage(torch.as_tensor(np.stack([pad_to(c, T) for c in part]))).numpy()
        out += [y[k, :len(c)] for k, c in enumerate(part)]
    return out


__all__ = ["ActionPrior", "PRIOR_DEFAULTS", "class_codes", "fit_per_frame", "frame_accuracy",
           "replayed", "resample", "stage_outputs", "train_prior"]
