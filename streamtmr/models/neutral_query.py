"""A neutral query for motion matching: the features the dummy's own neutral performance would give.

Motion matching looks up the database frame nearest to a query computed from its input. In a
cascade the input is the first stage's output, which still moves unlike the dummy's neutral
performance of the same motion (on SynthKinect its matcher features are further from the
neutral performance's than the raw recording's are), so the nearest database frame is often
another stretch of motion, and the output's pose strays from what the person does. A small
recurrent model reads the query frame by frame and predicts the query of the *own-tempo
neutral performance* (SynthKinect's ``target_sync``: the same motion performed by the dummy, in
a neutral style, at the person's own tempo); the matcher searches with the prediction.

It reads only what the matcher reads (in a cascade, the first stage's output), so the
cascade's privacy argument holds: the output reveals nothing of the person that the first
stage's output does not. It is trained on what it will read: the first stage's output for the
store's ``anonymizer_train`` people, every camera and repetition, never an evaluated person.

    NeutralQuery(features, hidden)       q → q + linear(LSTM(q)), one step per frame
    train_neutral_query(src, tgt)        fit one to pairs of query sequences

A residual with a zero-initialised head: an untrained model passes the query unchanged. The
matcher trains its own (:func:`streamtmr.models.motion_match.fit_neutral_query`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from streamtmr.models.action_prior import fit_per_frame
from streamtmr.models.tmr_stream import lstm_cell

#: Settings of a matcher's ``neutral_query`` (``None`` or absent: the query as computed).
QUERY_DEFAULTS: dict[str, Any] = {
    "hidden": 128,      # LSTM width
    "epochs": 15,
    "seed": 0,
    "stage": None,      # what it was trained on: the first stage's name and sha256
    # Train on a second copy of every pair replayed as real streams differ from the store's
    # (action_prior.replayed: another speed, frames dropped and interpolated back), source
    # and target alike.
    "augment": False,
    # Motions the store lacks (e.g. carry, push, pull: the rendered database plays them),
    # performed by the store's training people with their own-tempo neutral performances.
    "interactions": [],
}


class NeutralQuery(nn.Module):
    """Causal regressor: matcher queries ``[B, T, F]`` → predicted neutral queries ``[B, T, F]``."""

    def __init__(self, features: int, hidden: int = 128):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, features)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return seq + self.head(self.lstm(seq)[0])

    def step(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, first: torch.Tensor):
        """One frame ``x [B, F]`` → (neutral query ``[B, F]``, h, c); ``first [B]`` restarts a
        track (its state zeroed)."""
        keep = (~first)[:, None].to(x.dtype)
        h, c = lstm_cell(self.lstm, x, h * keep, c * keep)
        return x + self.head(h), h, c


def query_error(model: NeutralQuery, src: Sequence[torch.Tensor], tgt: Sequence[torch.Tensor],
                batch: int = 256) -> dict[str, float]:
    """Mean squared distance per frame (standardised feature units) from the target queries of
    the input queries as they are (``input``) and as ``model`` predicts them (``predicted``)."""
    sums = {"input": 0.0, "predicted": 0.0}
    frames = 0
    with torch.no_grad():
        for i in range(0, len(src), batch):
            x, y, valid = _padded(src[i:i + batch], tgt[i:i + batch])
            sums["input"] += float(((x - y) ** 2).sum(-1)[valid].sum())
            sums["predicted"] += float(((model(x) - y) ** 2).sum(-1)[valid].sum())
            frames += int(valid.sum())
    return {k: v / frames for k, v in sums.items()}


def _padded(src: Sequence[torch.Tensor], tgt: Sequence[torch.Tensor]):
    """End-padded ``[N, T, F]`` batches of paired sequences and their valid frames ``[N, T]``."""
    if any(len(a) != len(b) for a, b in zip(src, tgt, strict=True)):
        raise ValueError("neutral query: every input sequence needs a target of its length")
    lengths = torch.tensor([len(s) for s in src])
    x = nn.utils.rnn.pad_sequence(list(src), batch_first=True)
    y = nn.utils.rnn.pad_sequence(list(tgt), batch_first=True)
    return x, y, torch.arange(x.shape[1])[None] < lengths[:, None]


def train_neutral_query(src: Sequence[torch.Tensor], tgt: Sequence[torch.Tensor],
                        hidden: int = 128, epochs: int = 15, seed: int = 0, batch: int = 64,
                        lr: float = 3e-3) -> NeutralQuery:
    """Fit a :class:`NeutralQuery` to pairs of query sequences ``[T_i, F]``: the matcher's query
    of its input (``src``) and of the own-tempo neutral performance (``tgt``), frame-aligned.
    Squared error over every frame (the matcher searches with the prediction at every one)."""
    torch.manual_seed(seed)
    x, y, valid = _padded(src, tgt)
    model = NeutralQuery(x.shape[2], hidden)

    def loss(pred: torch.Tensor, idx: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return ((pred - y[idx]) ** 2).sum(-1)[m].mean()

    return fit_per_frame(model, x, valid, loss, epochs, seed, batch, lr, "neutral query")


__all__ = ["NeutralQuery", "QUERY_DEFAULTS", "query_error", "train_neutral_query"]
