"""Distributed training: 2 CPU processes with the gloo backend, tiny TMR config."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from streamtmr.data import synth
from streamtmr.models.checkpoint import read_metadata

TINY = Path(__file__).resolve().parents[1] / "configs" / "tmr_tiny.yaml"
SHORT = ["train.stages[0].iterations=2", "train.stages[1].iterations=2",
         "train.stages[2].iterations=2", "train.ckpt_every=1", "train.val_every=2"]

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("synth") / "tiny", n_subjects=6, n_actions=3,
                          views=(0,), reps=2, seed=0, progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    from streamtmr.train import Trainer, load_config
    from streamtmr.train.distributed import cleanup

    trainer = Trainer(load_config(TINY, SHORT), store, out)
    assert trainer.dist.world_size == world and trainer.dist.rank == rank
    trainer.fit()
    state = {k: v.detach().contiguous() for k, v in trainer.model.state_dict().items()}
    save_file(state, str(Path(out) / f"rank{rank}.safetensors"))
    cleanup()


def test_two_ranks_stay_identical(store, tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(store), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    # rank 0 alone wrote the run, and its model is the one both ranks hold
    final = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.equal(final[k], r0[k]) for k in r0)
    _, extra = read_metadata(tmp_path / "model.safetensors")
    assert extra["train"]["world_size"] == 2 and extra["train"]["step"] == 6
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len([ln for ln in lines if '"split"' not in ln]) == 6  # one writer, not two

