"""The generic training loop: stages in order, checkpoints, validation, exact resume, DDP.

A run directory holds::

    config.yaml                  the resolved config
    metrics.jsonl                one JSON object per log/validation event
    checkpoints/last.safetensors        model + training state summary (resume point)
    checkpoints/last.optim.safetensors  optimiser tensors; scalar state and step counters as JSON
    checkpoints/stage<k>.safetensors    the model at the end of stage k (optional)
    model.safetensors            the trained anonymizer (``--model`` of the other commands)

Determinism: the model is initialised from ``train.seed``; the data stream is a fixed function
of the seed (a permutation per epoch, cut into global batches, sharded over ranks); and torch's
RNG is reseeded every step from ``(seed, step, rank)``. Hence a resumed run reproduces an
uninterrupted one, and ``N`` ranks see the same global batches as one process.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich import console as rich_console
from rich import progress as rp
from rich.table import Column
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from streamtmr.data.datasets import WindowDataset
from streamtmr.data.real_windows import real_people_names
from streamtmr.data.store import SkeletonStore, StoreError
from streamtmr.models.base import Anonymizer
from streamtmr.models.checkpoint import CheckpointError, read_metadata, save_checkpoint
from streamtmr.models.registry import build_model
from streamtmr.train import distributed
from streamtmr.train.config import Config, ConfigError, dump_config
from streamtmr.train.curriculum import (
    Curriculum,
    DataInfo,
    Stage,
    _LossNet,
    check_supported,
    curriculum_class,
    lr_factor,
    unique_parameters,
)
from streamtmr.train.distributed import DistInfo

log = logging.getLogger(__name__)

OPTIM_FORMAT = "streamtmr-optim-1"
LAST = "last.safetensors"
LAST_OPTIM = "last.optim.safetensors"


class TrainError(RuntimeError):
    """The run cannot start or resume (the message names the file or setting)."""


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class TrainData:
    """Training windows, fixed validation windows and the label encodings."""

    train: WindowDataset
    positions: np.ndarray  # dataset positions used for training
    val: dict[str, torch.Tensor]  # centre crops of the held-out rows
    info: DataInfo
    summary: dict[str, Any]


def _split_subjects(store: SkeletonStore, split: str) -> list[int]:
    splits = store.meta.get("splits")
    if not isinstance(splits, dict) or split not in splits:
        have = sorted(splits) if isinstance(splits, dict) else []
        raise ConfigError(f"data.train_split: {store.root / 'meta.json'} has no split "
                          f"{split!r} (have {have})")
    return sorted(int(s) for s in splits[split])


def load_data(cfg: Config, data_dir: str | Path) -> TrainData:
    """Open the store; training rows = the split's subjects minus the validation hold-out."""
    try:
        store = SkeletonStore(data_dir)
    except StoreError as e:
        raise TrainError(str(e)) from None
    d = cfg.data
    for name in (d.source_array, d.target_array):
        if name not in store.array_names:
            raise TrainError(f"{store.root}: no array {name!r} (have {store.array_names}); "
                             f"see data.source_array / data.target_array")
    subjects = _split_subjects(store, d.train_split)
    arrays = (d.source_array, d.target_array)
    ds = WindowDataset(store, d.window, crop="random", subjects=subjects, arrays=arrays,
                       seed=cfg.train.seed)
    if len(ds) == 0:
        raise TrainError(f"{store.root}: no sequences of the {d.train_split!r} subjects")
    if d.val_column not in ds.labels:
        raise ConfigError(f"data.val_column: {store.root} has no label column {d.val_column!r}")
    column = ds.labels[d.val_column][ds.indices]
    held = set(d.val_values) if d.val_values is not None else {int(column.max())}
    is_val = np.isin(column, sorted(held))
    positions = np.flatnonzero(~is_val)
    if len(positions) == 0:
        raise ConfigError(f"data.val_values: holding out {d.val_column} in {sorted(held)} "
                          "leaves no training sequences")
    labels = {c: sorted({int(v) for v in ds.labels[c][ds.indices[positions]]})
              for c in ("subject", "action") if c in ds.labels}
    info = DataInfo(labels=labels, window=d.window)

    val_ds = WindowDataset(store, d.window, crop="center", subjects=subjects, arrays=arrays)
    val_pos = np.flatnonzero(is_val)[: d.max_val_windows]
    items = [val_ds[int(i)] for i in val_pos]
    val = ({k: torch.stack([it[k] for it in items]) for k in items[0]} if items else {})
    summary = {"store": str(store.root.resolve()), "dataset": store.meta.get("name"),
               "train_split": d.train_split, "train_subjects": subjects,
               "val": {"column": d.val_column, "values": sorted(held),
                       "windows": len(val_pos)},
               "train_sequences": int(len(positions)), "labels": labels,
               "real_subjects": real_people_names(d.real_dir, d.real_utkinect_subjects)}
    return TrainData(ds, positions, val, info, summary)


class _StreamItems(Dataset):
    """Items addressed as ``(epoch, position)`` so random crops depend only on the step."""

    def __init__(self, ds: WindowDataset, positions: np.ndarray):
        self.ds, self.positions = ds, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, j = key
        self.ds.set_epoch(epoch)
        return self.ds[int(self.positions[j])]


class StepBatches:
    """The batches of steps ``[start, stop)`` for one rank: a distributed sampler keyed by step.

    The stream is the concatenation of one seeded permutation per epoch; step ``s`` takes the
    global batch at ``[s·B, (s+1)·B)`` and rank ``r`` its ``r``-th slice of ``B / world`` items.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int,
                 info: DistInfo):
        if batch_size % info.world_size:
            raise ConfigError(f"train.batch_size: {batch_size} is not divisible by the "
                              f"{info.world_size} processes")
        self.n, self.B, self.seed, self.start, self.stop = n, batch_size, seed, start, stop
        self.info = info
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e == epoch - 1}
            self._perms[epoch] = np.random.default_rng((self.seed, epoch)).permutation(self.n)
        return self._perms[epoch]

    def batch(self, step: int) -> list[tuple[int, int]]:
        per = self.B // self.info.world_size
        first = step * self.B + self.info.rank * per
        return [(p // self.n, int(self._perm(p // self.n)[p % self.n]))
                for p in range(first, first + per)]

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return (self.batch(s) for s in range(self.start, self.stop))


def encode_labels(batch: dict[str, torch.Tensor], info: DataInfo) -> dict[str, torch.Tensor]:
    """Raw label values → class indices ``0..K-1`` of the training label sets."""
    out = dict(batch)
    for col, values in info.labels.items():
        if col in out:
            top = max(values)
            table = torch.full((top + 1,), -1, dtype=torch.long)
            table[torch.tensor(values)] = torch.arange(len(values))
            raw = out[col]
            known = (raw >= 0) & (raw <= top)
            out[col] = torch.where(known, table[raw.clamp(0, top)], -1)
    return out


# ---------------------------------------------------------------------------------------------
# Optimiser state (safetensors + JSON, never pickle)


def save_optim_state(path: Path, optimizers: dict[str, torch.optim.Optimizer],
                     state: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        groups = sd["param_groups"]
        per: dict[str, dict[str, Any]] = {}
        for idx, st in sd["state"].items():
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    tensors[f"{name}/{idx}/{k}"] = v.detach().cpu().contiguous()
                else:
                    per.setdefault(str(idx), {})[k] = v
        scalars[name] = {"param_groups": groups, "scalars": per}
    meta = {"format": OPTIM_FORMAT, "optimizers": json.dumps(scalars),
            "state": json.dumps(state)}
    _atomic(path, lambda p: save_file(tensors, str(p), metadata=meta))


def load_optim_state(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(optimiser state dicts by name, training state) from :func:`save_optim_state`."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{path}: unreadable optimiser state ({e})") from None
    if meta.get("format") != OPTIM_FORMAT:
        raise CheckpointError(f"{path}: not a streamtmr optimiser state")
    scalars = json.loads(meta["optimizers"])
    out: dict[str, dict[str, Any]] = {}
    for name, s in scalars.items():
        state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in s["scalars"].items()}
        for key, t in tensors.items():
            opt, idx, k = key.split("/")
            if opt == name:
                state.setdefault(int(idx), {})[k] = t
        out[name] = {"state": state, "param_groups": s["param_groups"]}
    return out, json.loads(meta["state"])


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class Progress:
    """Where the run is: stage position, steps done in it, steps done overall."""

    stage: int = 0
    step_in_stage: int = 0
    step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0]
               % (2**63))


class Trainer:
    """Runs a :class:`Curriculum` over a store; see the module docstring."""

    def __init__(self, cfg: Config, data_dir: str | Path, out_dir: str | Path | None = None,
                 resume: bool = False, device: str | None = None):
        self.cfg = cfg
        self.out = Path(out_dir if out_dir is not None else cfg.output.dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.dist, self.device = distributed.init_distributed(device or cfg.train.device)
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        self.data = load_data(cfg, data_dir)
        cls = curriculum_class(cfg.model.method)
        check_supported(cfg, cls)
        model_config = cls.model_config(cfg.model, self.data.info)
        torch.manual_seed(cfg.train.seed)
        try:
            model = build_model(model_config)
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{cfg.source}: model: cannot build {cfg.model.method!r} "
                              f"({e})") from None
        self.model: Anonymizer = model.to(self.device)
        self.curriculum: Curriculum = cls(self.model, cfg)
        self.progress = Progress()
        self._optim_state: dict[str, dict[str, Any]] | None = None
        self._base_lrs: dict[str, list[float]] = {}
        self._metrics = None
        if resume:
            self._resume()
        elif self.dist.is_main and (self.ckpt_dir / LAST).exists():
            raise TrainError(f"{self.out}: already holds a run (pass --resume to continue it, "
                             "or choose another --out)")

    # -- resume ----------------------------------------------------------------------------------

    def _resume(self) -> None:
        path, opath = self.ckpt_dir / LAST, self.ckpt_dir / LAST_OPTIM
        if not path.is_file() or not opath.is_file():
            raise TrainError(f"{self.ckpt_dir}: nothing to resume ({LAST} and {LAST_OPTIM} "
                             "are written every train.ckpt_every steps)")
        config, _ = read_metadata(path)
        if config != self.model.config:
            raise TrainError(f"{path}: the checkpoint's model config differs from this run's "
                             f"({config} vs {self.model.config})")
        self.model.load_state_dict(load_file(str(path), device=str(self.device)), strict=True)
        self._optim_state, state = load_optim_state(opath)
        names = [s.name for s in self.curriculum.stages]
        if state["stage_names"][: state["stage"] + 1] != names[: state["stage"] + 1]:
            raise TrainError(f"{path}: stages {state['stage_names']} do not match the config's "
                             f"{names}")
        self.progress = Progress(state["stage"], state["step_in_stage"], state["step"])
        if self.progress.step_in_stage == 0:  # saved at a stage's end: the next starts fresh
            self._optim_state = None
        where = names[state["stage"]] if state["stage"] < len(names) else "(finished)"
        log.info("resuming %s at stage %s, step %d", self.out, where, state["step"])

    # -- stage setup -----------------------------------------------------------------------------

    def _setup_stage(self, stage: Stage) -> tuple[nn.Module, dict[str, torch.optim.Optimizer]]:
        """Freeze all but the stage's modules (frozen ones in eval mode); fresh optimisers."""
        trainable = self.curriculum.trainable(stage)
        self.model.requires_grad_(False)
        self.model.eval()
        for m in trainable:
            m.requires_grad_(True)
            m.train()
        params = [p for p in unique_parameters(trainable) if p.requires_grad]
        if not params:
            raise TrainError(f"stage {stage.name!r} has no trainable parameters")
        optimizers = self.curriculum.optimizers(stage, params)
        self._base_lrs = {n: [g["lr"] for g in o.param_groups] for n, o in optimizers.items()}
        if self._optim_state is not None:  # resuming inside this stage
            for name, opt in optimizers.items():
                try:
                    opt.load_state_dict(self._optim_state[name])
                except (KeyError, ValueError) as e:
                    raise TrainError(f"{self.ckpt_dir / LAST_OPTIM}: optimiser {name!r} does "
                                     f"not match stage {stage.name!r} ({e})") from None
            self._optim_state = None
        net = distributed.wrap(_LossNet(self.model, self.curriculum.losses), self.dist,
                               self.device, self.cfg.train.find_unused_parameters)
        return net, optimizers

    def _loader(self, stage: Stage) -> DataLoader:
        t = self.cfg.train
        p = self.progress
        start = p.step - p.step_in_stage  # global step at which this stage began
        batches = StepBatches(len(self.data.positions), t.batch_size, t.seed,
                              p.step, start + stage.iterations, self.dist)
        return DataLoader(_StreamItems(self.data.train, self.data.positions),
                          batch_sampler=batches, num_workers=t.num_workers,
                          persistent_workers=False, pin_memory=self.device.type == "cuda")

    # -- checkpoints, metrics --------------------------------------------------------------------

    def _extra(self, complete: bool) -> dict[str, Any]:
        p, stages = self.progress, self.curriculum.stages
        return {"train": {"stage": stages[min(p.stage, len(stages) - 1)].name,
                          "stage_position": p.stage, "step_in_stage": p.step_in_stage,
                          "step": p.step, "total_steps": sum(s.iterations for s in stages),
                          "complete": complete, "seed": self.cfg.train.seed,
                          "world_size": self.dist.world_size},
                "data": self.data.summary,
                "train_config": dump_config(self.cfg)}

    def _save(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        if not self.dist.is_main:
            return
        p = self.progress
        state = {"stage": p.stage, "step_in_stage": p.step_in_stage, "step": p.step,
                 "stage_names": [s.name for s in self.curriculum.stages]}
        _atomic(self.ckpt_dir / LAST,
                lambda path: save_checkpoint(path, self.model, self._extra(False)))
        save_optim_state(self.ckpt_dir / LAST_OPTIM, optimizers, state)

    def _log(self, record: dict[str, Any]) -> None:
        if self._metrics is not None:
            self._metrics.write(json.dumps(record) + "\n")
            self._metrics.flush()

    @torch.no_grad()
    def validate(self, batch_size: int = 64) -> dict[str, float]:
        """MSE (m²) and MPJPE (mm) of ``retarget`` against the ground-truth target."""
        val = self.data.val
        if not val:
            return {}
        d = self.cfg.data
        modes = {m: m.training for m in self.model.modules()}
        self.model.eval()
        se = err = 0.0
        n = 0
        for i in range(0, len(val[d.source_array]), batch_size):
            batch = self.curriculum.prepare(
                encode_labels({k: v[i:i + batch_size] for k, v in val.items()},
                              self.data.info))
            batch = {k: v.to(self.device) for k, v in batch.items()}
            y = self.model.retarget(batch["source"], batch["target_lengths"])
            diff = y - batch["target"]
            se += float(diff.pow(2).sum())
            err += float(diff.norm(dim=-1).sum())
            n += diff.shape[0] * diff.shape[1] * diff.shape[2]
        for m, was in modes.items():
            m.training = was
        return {"val_mse": se / (3 * n), "val_mpjpe_mm": 1000.0 * err / n}

    # -- run -------------------------------------------------------------------------------------

    def fit(self, max_steps: int | None = None) -> Path:
        """Train the remaining stages; returns the final model (``model.safetensors``).

        With ``max_steps`` the run stops after that many steps in total, checkpoints, and
        returns the resume checkpoint instead (continue with ``resume=True``).
        """
        t, stages = self.cfg.train, self.curriculum.stages
        if self.dist.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(dump_config(self.cfg))
            self._metrics = open(self.out / "metrics.jsonl", "a")
        total = sum(s.iterations for s in stages)
        stop = total if max_steps is None else min(max_steps, total)
        bar = _ProgressBar(stop, self.progress.step, enabled=self.dist.is_main,
                           bar=t.progress)
        t0 = time.perf_counter()
        try:
            with bar:
                while self.progress.stage < len(stages) and self.progress.step < stop:
                    self._run_stage(stages[self.progress.stage], bar, t0, stop)
        finally:
            if self._metrics is not None:
                self._metrics.close()
                self._metrics = None
        if self.progress.stage < len(stages):
            distributed.barrier(self.dist)
            return self.ckpt_dir / LAST
        final = self.out / "model.safetensors"
        if self.dist.is_main:
            _atomic(final, lambda p: save_checkpoint(p, self.model, self._extra(True)))
        distributed.barrier(self.dist)
        return final

    def _run_stage(self, stage: Stage, bar: _ProgressBar, t0: float, stop: int) -> None:
        t, p = self.cfg.train, self.progress
        net, optimizers = self._setup_stage(stage)
        sums: dict[str, float] = {}
        count = 0
        for items in self._loader(stage):
            torch.manual_seed(step_seed(t.seed, p.step, self.dist.rank))
            factor = lr_factor(p.step_in_stage, stage.iterations, t.lr_schedule,
                               t.warmup_steps, t.lr_min_ratio)
            for name, opt in optimizers.items():
                for g, base in zip(opt.param_groups, self._base_lrs[name], strict=True):
                    g["lr"] = base * factor
            batch = self.curriculum.prepare(encode_labels(items, self.data.info))
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            batch = self.curriculum.augment(batch, stage)
            logs = self.curriculum.step(net, batch, stage, optimizers)
            p.step += 1
            p.step_in_stage += 1
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            last = p.step_in_stage == stage.iterations
            if p.step % t.log_every == 0 or last:
                means = distributed.mean_across_ranks(
                    {k: v / count for k, v in sums.items()}, self.dist, self.device)
                lr = next(iter(optimizers.values())).param_groups[0]["lr"]
                self._log({"step": p.step, "stage": stage.name, **means, "lr": lr,
                           "time": round(time.perf_counter() - t0, 3)})
                bar.update(p.step, stage.name, means)
                sums, count = {}, 0
            else:
                bar.update(p.step, stage.name, None)
            if self.dist.is_main and (p.step % t.val_every == 0 or last):
                metrics = self.validate()
                if metrics:
                    self._log({"step": p.step, "stage": stage.name, "split": "val",
                               **metrics, "time": round(time.perf_counter() - t0, 3)})
                    bar.note(metrics)
            if last:
                p.stage += 1
                p.step_in_stage = 0
            if p.step % t.ckpt_every == 0 or last or p.step == stop:
                self._save(optimizers)
            if p.step == stop and not last:
                return
        if self.dist.is_main and self.cfg.output.keep_stage_checkpoints:
            save_checkpoint(self.ckpt_dir / f"stage{stage.position + 1}.safetensors",
                            self.model, self._extra(False))


class _ProgressBar:
    """Training progress: a rich bar with the latest losses on a terminal; otherwise (output
    redirected, or ``bar`` off) one log line per logged step with losses, rate and ETA."""

    def __init__(self, total: int, done: int, enabled: bool, bar: bool = True):
        self.enabled = enabled
        self.total, self.done = total, done
        self._losses = ""
        self._val = ""
        self._t0 = time.perf_counter()
        self.lines = enabled and not (bar and rich_console.Console().is_terminal)
        if enabled and not self.lines:
            self._bar = rp.Progress(
                rp.TextColumn("[bold]{task.description}",
                              table_column=Column(no_wrap=True, min_width=10)),
                rp.BarColumn(bar_width=24), rp.MofNCompleteColumn(), rp.TimeElapsedColumn(),
                rp.TimeRemainingColumn(),
                rp.TextColumn("{task.fields[losses]}", table_column=Column(overflow="fold")))

    def __enter__(self) -> _ProgressBar:
        if self.enabled and not self.lines:
            self._bar.__enter__()
            self._task = self._bar.add_task("train", total=self.total, completed=self.done,
                                            losses="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled and not self.lines:
            self._bar.__exit__(*exc)

    def update(self, step: int, stage: str, losses: dict[str, float] | None) -> None:
        if not self.enabled:
            return
        if losses is not None:
            self._losses = " ".join(f"{k} {v:.4g}" for k, v in losses.items()
                                    if k not in ("grad_norm",))
        if self.lines:
            if losses is not None or step == self.total:
                log.info("step %d/%d [%s] %s | %s", step, self.total, stage,
                         f"{self._losses} {self._val}".strip(), self._rate(step))
            return
        self._bar.update(self._task, completed=step, description=stage,
                         losses=f"{self._losses} {self._val}".strip())

    def _rate(self, step: int) -> str:
        elapsed = time.perf_counter() - self._t0
        rate = (step - self.done) / elapsed if elapsed > 0 else 0.0
        if rate <= 0:
            return "ETA unknown"
        eta = int((self.total - step) / rate)
        return f"{rate:.2f} steps/s, ETA {eta // 3600:d}:{eta % 3600 // 60:02d}:{eta % 60:02d}"

    def note(self, metrics: dict[str, float]) -> None:
        self._val = "| " + " ".join(f"{k} {v:.4g}" for k, v in metrics.items())


def train(cfg: Config, data_dir: str | Path, out_dir: str | Path | None = None,
          resume: bool = False, device: str | None = None) -> Path:
    """Train ``cfg`` on the store at ``data_dir`` (joins torchrun's process group if any).

    The method's registry entry names its curriculum. Curricula with ``own_loop`` (PMR/DMR and
    the Moon anonymizers train several networks against each other: critics, classifier
    ensembles) run single-process in their own loop, checkpointing at stage ends.
    """
    curriculum = curriculum_class(cfg.model.method)
    check_supported(cfg, curriculum)
    if curriculum.own_loop:
        if resume:
            raise TrainError(f"{cfg.model.method}: --resume is not supported; its loop "
                             "checkpoints each stage (stage<k>.safetensors) in the run directory")
        return curriculum.run_own_loop(cfg, data_dir, out_dir)
    trainer = Trainer(cfg, data_dir, out_dir, resume=resume, device=device)
    try:
        return trainer.fit()
    finally:
        distributed.cleanup()
