"""Studies: a set of training runs (ablations, sweeps) described in one YAML file.

A study file (``configs/studies.yaml``) lists runs, each a config plus ``--set`` overrides, and
how the evaluation report groups them::

    out: runs/studies            # where the runs go (relative to the repository root)
    runs:
      - name: tmr-no-lstm
        config: configs/tmr_small.yaml
        set: [model.overrides.lstm=false]
        group: ablation            # or a list of groups
      - name: pmr-emb-2
        config: configs/pmr_small.yaml
        set: [...]
        group: "PMR α_emb"         # a sweep: plotted over `param` at each run's `value`
        param: "α_emb"
        value: 2

``streamtmr study train`` runs them as parallel ``streamtmr train`` processes (resuming runs
that stopped early, skipping finished ones) and ``streamtmr evaluate --models FILE`` evaluates
their checkpoints with the groups attached.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from streamtmr.train.config import ConfigError

RUN_KEYS = {"name", "config", "set", "group", "param", "value", "reference"}


@dataclass(frozen=True)
class StudyRun:
    name: str
    config: Path
    overrides: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    param: str | None = None
    value: float | None = None
    reference: bool = False


@dataclass
class Study:
    path: Path
    root: Path  # the repository root the paths are relative to
    out: Path
    runs: list[StudyRun] = field(default_factory=list)

    def run_dir(self, run: StudyRun, out: Path | None = None) -> Path:
        return (out or self.out) / run.name

    def select(self, names: list[str] | None) -> list[StudyRun]:
        if not names:
            return list(self.runs)
        known = {r.name: r for r in self.runs}
        missing = [n for n in names if n not in known]
        if missing:
            raise ConfigError(f"{self.path}: no run named {', '.join(missing)} (have "
                              f"{', '.join(known)})")
        return [known[n] for n in names]


def load_study(path: str | Path) -> Study:
    """Read and check a study file; errors name the file and the run."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read study ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise ConfigError(f"{path}: expected a mapping with a 'runs' list")
    root = path.resolve().parent.parent if path.resolve().parent.name == "configs" else \
        path.resolve().parent
    out = Path(data.get("out", "runs/studies"))
    study = Study(path, root, out if out.is_absolute() else root / out)
    seen: set[str] = set()
    for i, r in enumerate(data["runs"]):
        where = f"{path}: runs[{i}]"
        if not isinstance(r, dict):
            raise ConfigError(f"{where}: expected a mapping")
        unknown = set(r) - RUN_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(sorted(RUN_KEYS))})")
        name = r.get("name")
        if not isinstance(name, str) or not name or "/" in name:
            raise ConfigError(f"{where}: 'name' must be a non-empty string without '/'")
        if name in seen:
            raise ConfigError(f"{where}: duplicate name {name!r}")
        seen.add(name)
        if not isinstance(r.get("config"), str):
            raise ConfigError(f"{where} ({name}): 'config' (a YAML path) is required")
        sets = r.get("set") or []
        if not isinstance(sets, list) or not all(isinstance(s, str) for s in sets):
            raise ConfigError(f"{where} ({name}): 'set' must be a list of KEY=VALUE strings")
        groups = r.get("group") or []
        groups = [groups] if isinstance(groups, str) else groups
        value = r.get("value")
        if value is not None and not isinstance(value, (int, float)):
            raise ConfigError(f"{where} ({name}): 'value' must be a number")
        if (r.get("param") is None) != (value is None):
            raise ConfigError(f"{where} ({name}): 'param' and 'value' go together")
        cfg = Path(r["config"])
        study.runs.append(StudyRun(name, cfg if cfg.is_absolute() else root / cfg,
                                   tuple(" ".join(s.split()) for s in sets),
                                   tuple(str(g) for g in groups), r.get("param"),
                                   None if value is None else float(value),
                                   bool(r.get("reference", False))))
    return study


def status(run_dir: Path) -> str:
    """``done`` (final model), ``partial`` (a resumable checkpoint: TMR's exact resume),
    ``stopped`` (stopped without a resume point: PMR/Moon checkpoint per stage only) or
    ``new``."""
    if (run_dir / "model.safetensors").is_file():
        return "done"
    if (run_dir / "checkpoints" / "last.safetensors").is_file() and \
            (run_dir / "config.yaml").is_file():
        return "partial"
    if run_dir.is_dir() and any(p.suffix == ".safetensors" for p in run_dir.rglob("*")):
        return "stopped"
    return "new"


def train_command(run: StudyRun, data: Path, run_dir: Path, device: str | None,
                  extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "streamtmr", "train", "--data", str(data), "--out",
           str(run_dir), "--no-progress"]
    if status(run_dir) == "partial":
        cmd += ["--resume"]
    else:
        cmd += ["--config", str(run.config)]
        for s in (*run.overrides, *extra):
            cmd += ["--set", s]
    if device:
        cmd += ["--device", device]
    return cmd


def run_study(study: Study, data: Path, runs: list[StudyRun], jobs: int = 1,
              out: Path | None = None, device: str | None = None, extra: list[str] = (),
              deadline_s: float | None = None, log=print) -> dict[str, Any]:
    """Train ``runs`` (``jobs`` at a time; finished runs are skipped, stopped ones resumed).
    Processes still running at ``deadline_s`` are stopped (their last checkpoint stays, and the
    next call resumes them). Returns ``{name: {status, returncode, seconds, log}}``."""
    t0 = time.monotonic()
    pending = [r for r in runs if status(study.run_dir(r, out)) != "done"]
    result: dict[str, Any] = {r.name: {"status": "done", "returncode": 0, "seconds": 0.0}
                              for r in runs if r not in pending}
    active: dict[str, tuple[subprocess.Popen, float, Any]] = {}

    def reap(name: str, proc: subprocess.Popen, start: float, fh) -> None:
        fh.close()
        rd = study.run_dir(next(r for r in runs if r.name == name), out)
        result[name] = {"status": status(rd), "returncode": proc.returncode,
                        "seconds": round(time.monotonic() - start, 1),
                        "log": str(rd / "train.log")}
        log(f"{name}: {result[name]['status']} (exit {proc.returncode}, "
            f"{result[name]['seconds']:.0f} s)")

    try:
        while pending or active:
            while pending and len(active) < max(1, jobs):
                r = pending.pop(0)
                rd = study.run_dir(r, out)
                if status(rd) == "stopped":  # no resume point: start that run again
                    shutil.rmtree(rd)
                rd.mkdir(parents=True, exist_ok=True)
                cmd = train_command(r, data, rd, device, list(extra))
                fh = open(rd / "train.log", "a")
                fh.write("$ " + " ".join(cmd) + "\n")
                fh.flush()
                env = {**os.environ, "PYTHONUNBUFFERED": "1"}
                active[r.name] = (subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                                   env=env, start_new_session=True),
                                  time.monotonic(), fh)
                log(f"{r.name}: started ({' '.join(cmd[3:])})")
            for name, (proc, start, fh) in list(active.items()):
                if proc.poll() is not None:
                    del active[name]
                    reap(name, proc, start, fh)
            if deadline_s is not None and time.monotonic() - t0 > deadline_s:
                log(f"deadline of {deadline_s:.0f} s reached: stopping {len(active)} run(s)")
                break
            time.sleep(0.5)
    finally:
        for proc, _start, _fh in active.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for name, (proc, start, fh) in active.items():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            reap(name, proc, start, fh)
        for r in pending:
            result[r.name] = {"status": status(study.run_dir(r, out)), "returncode": None,
                              "seconds": 0.0}
    return result


__all__ = ["Study", "StudyRun", "load_study", "run_study", "status", "train_command"]
