"""Person verification on fresh people: how well a probe tells "same person" in a model's output.

A :class:`streamtmr.train.privacy.VerificationHead` is trained on the output's pose statistics
(:func:`streamtmr.train.privacy.pose_statistics`) of cross-identity pair items of the stream
``--seed`` (:mod:`streamtmr.data.pairs`; the training recipes draw stream 1, so these people were
never seen), then scored on held-out items of people it did not train on: AUC 0.5 is chance.
``--source`` probes the raw sources instead (the same people without anonymization).

    python -m bench.verification_probe runs/x/model.safetensors [--items 600] [--source]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from streamtmr.data.pairs import pair_batch
from streamtmr.dummy import default_dummy
from streamtmr.models.checkpoint import load_checkpoint
from streamtmr.train import privacy as P

KEYS = ("a", "b", "a2")


def features(checkpoint: str, items: int, seed: int, source: bool) -> tuple[dict, torch.Tensor]:
    lengths = default_dummy().lengths
    raw = pair_batch(seed, np.arange(items), lengths, 64)
    model = load_checkpoint(checkpoint).eval()
    dummy = torch.as_tensor(np.array(lengths), dtype=torch.float32)
    out = {}
    with torch.no_grad():
        for k in KEYS:
            x = torch.from_numpy(raw[k])
            y = x if source else torch.cat([model.retarget(x[i:i + 100], dummy)
                                            for i in range(0, items, 100)])
            out[k] = P.pose_statistics(y)
    return out, torch.from_numpy(raw["action"]).long()


def probe_auc(feats: dict, action: torch.Tensor, train: int, steps: int = 800) -> float:
    torch.manual_seed(0)
    head = P.VerificationHead(feats["a"].shape[1])
    opt = torch.optim.Adam(head.parameters(), 1e-3)
    for _ in range(steps):
        idx = torch.randint(train, (32,))
        labels, mask = P.verification_targets(action[idx])
        loss, _ = P.verification_loss(head, *(feats[k][idx] for k in KEYS), labels, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        held = slice(train, None)
        labels, mask = P.verification_targets(action[held])
        logits = head(torch.cat([feats["a"][held], feats["b"][held]]), feats["a2"][held])
        return float(P.verification_auc(logits[mask], labels[mask]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--items", type=int, default=600, help="pair items (80 %% train the probe)")
    ap.add_argument("--seed", type=int, default=99, help="pair stream (training uses 1)")
    ap.add_argument("--source", action="store_true", help="probe the raw sources")
    a = ap.parse_args()
    torch.set_num_threads(1)
    feats, action = features(a.checkpoint, a.items, a.seed, a.source)
    auc = probe_auc(feats, action, int(0.8 * a.items))
    print(f"{a.checkpoint}: {'source' if a.source else 'output'} verification AUC on "
          f"{a.items - int(0.8 * a.items)} held-out items of fresh people: {auc:.3f}")


if __name__ == "__main__":
    main()
