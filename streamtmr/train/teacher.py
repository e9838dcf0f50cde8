"""A frozen action recognizer as a utility term (``act_out``): the anonymized output must still
be recognised as its action by a network trained on *original* skeletons.

Privacy terms move the output's pose away from the source; what a downstream application needs is
that a recognizer trained on real, un-anonymized data still reads the action (the evaluation's
"frozen action" utility). The teacher is trained once on the source windows of the anonymizer's
training subjects (never an evaluation subject), then frozen; ``act_out`` is its cross-entropy
on the decoded output, whose gradient flows into the anonymizer only.

The teacher is the ST-GCN-lite network of :mod:`streamtmr.models.classifier` on canonical
windows, neither of the evaluation's two attacker architectures (SGN-style, temporal
transformer), so the anonymizer cannot pass the evaluation by fitting the quirks of the network
that scores it. Checkpoints are safetensors.

    python -m streamtmr.train.teacher --data data/synthkinect --out runs/action_teacher.safetensors
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from streamtmr import skeleton
from streamtmr.data.datasets import load_windows
from streamtmr.data.store import SkeletonStore
from streamtmr.models.classifier import STGCNClassifier

FORMAT = "streamtmr-action-teacher-2"


class ActionTeacher(nn.Module):
    """Frozen recognizer: windows ``[B, T, 25, 3]`` (any place and heading in the room) →
    action logits ``[B, num_actions]`` (class ``i`` is action label ``i``)."""

    def __init__(self, num_actions: int, channels: int = 32, blocks: int = 3):
        super().__init__()
        self.net = STGCNClassifier(num_actions, channels, blocks)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return self.net(skeleton.canonicalize(windows)[0])

    @property
    def num_actions(self) -> int:
        return self.net.head.out_features

    def freeze(self) -> ActionTeacher:
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self


def train_teacher(windows: np.ndarray, actions: np.ndarray, num_actions: int,
                  epochs: int = 10, batch: int = 64, lr: float = 2e-3, seed: int = 0,
                  channels: int = 32) -> ActionTeacher:
    """Fit on ``windows`` labelled ``actions`` (ints in ``[0, num_actions)``; Adam, cosine
    decay, label smoothing 0.1) and freeze."""
    y = torch.as_tensor(np.asarray(actions), dtype=torch.long)
    if int(y.min()) < 0 or int(y.max()) >= num_actions:
        raise ValueError(f"action labels must lie in [0, {num_actions}), got "
                         f"[{int(y.min())}, {int(y.max())}]")
    x = torch.as_tensor(np.asarray(windows, np.float32))
    torch.manual_seed(seed)
    teacher = ActionTeacher(num_actions, channels)
    opt = torch.optim.Adam(teacher.parameters(), lr=lr)
    steps = epochs * math.ceil(len(x) / batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    teacher.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            loss = F.cross_entropy(teacher(x[idx]), y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return teacher.freeze()


def action_teacher_loss(teacher: ActionTeacher, output: torch.Tensor,
                        action: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the frozen teacher on the anonymized windows ``[B, T, 25, 3]``."""
    return F.cross_entropy(teacher(output), action)


def save_teacher(teacher: ActionTeacher, path: str | Path, info: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "num_actions": str(teacher.num_actions),
            "channels": str(teacher.net.out_dim), "info": json.dumps(info)}
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(path), meta)
    return path


def load_teacher(path: str | Path, device: str | torch.device = "cpu") -> ActionTeacher:
    """A saved teacher, frozen (safetensors: nothing is unpickled). Raises ``ValueError``
    naming the file when it is not one."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"not an action teacher (format {meta.get('format')!r}, "
                             f"expected {FORMAT!r})")
        teacher = ActionTeacher(int(meta["num_actions"]), int(meta["channels"]))
        teacher.load_state_dict(load_file(str(path)))
    except (OSError, KeyError, RuntimeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
    return teacher.to(device).freeze()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train the frozen action teacher of 'act_out' on "
                                "the source windows of a store's anonymizer-training subjects.")
    p.add_argument("--data", required=True, help="SynthKinect store")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--split", default="anonymizer_train")
    p.add_argument("--window", type=int, default=64)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    store = SkeletonStore(args.data)
    splits = store.meta.get("splits") or {}
    if args.split not in splits:
        p.error(f"--split {args.split!r}: {store.root / 'meta.json'} has splits {sorted(splits)}")
    subjects = sorted(int(s) for s in splits[args.split])
    w = load_windows(store, args.window, stride=args.window // 2, subjects=subjects)
    num_actions = len(store.meta.get("actions") or []) or int(w["action"].max()) + 1
    teacher = train_teacher(np.asarray(w["joints"]), w["action"], num_actions)
    path = save_teacher(teacher, args.out, {"store": str(store.root), "split": args.split,
                                            "windows": len(w["action"])})
    print(f"action teacher: {len(w['action'])} windows, {num_actions} actions -> {path}")


if __name__ == "__main__":
    main()
