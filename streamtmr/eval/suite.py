"""Which methods to evaluate, and the full evaluation run behind ``streamtmr evaluate``.

Methods come from: the baselines (``naive``, ``noise`` at one or several σ), checkpoints given
explicitly, checkpoints listed in a YAML/JSON file (``[{name, checkpoint}, ...]`` or
``{name: checkpoint}``), every ``model.safetensors`` under a runs directory, and the shipped
default model when it exists. Sweeps (noise σ; any config or training-config value that varies
across the checkpoints of one method, e.g. PMR α_emb, Moon α/β, TMR loss weights) get a
trade-off plot.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from streamtmr.dummy import Dummy
from streamtmr.eval import report
from streamtmr.eval.protocol import Method, ProtocolError, method_from_model
from streamtmr.models.checkpoint import (
    CheckpointError,
    default_checkpoint_path,
    load_checkpoint,
    read_metadata,
)
from streamtmr.models.registry import build_model

log = logging.getLogger(__name__)

DEFAULT_SIGMAS = (0.01, 0.02, 0.05, 0.1, 0.2)


@dataclass
class Candidate:
    """A method before it is built: a name and either a baseline config or a checkpoint."""

    name: str
    config: dict[str, Any] | None = None
    checkpoint: Path | None = None


def baseline_candidates(sigmas: tuple[float, ...] = DEFAULT_SIGMAS, naive: bool = True
                        ) -> list[Candidate]:
    out = [Candidate("naive", {"method": "naive"})] if naive else []
    out += [Candidate(f"noise σ={s:g}", {"method": "noise", "sigma": float(s)}) for s in sigmas]
    return out


def read_model_list(path: str | Path) -> list[Candidate]:
    """A YAML/JSON list of checkpoints: ``[{name, checkpoint}]`` or ``{name: checkpoint}``;
    relative paths are relative to the list file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ProtocolError(f"{path}: cannot read model list ({e})") from None
    items = (list(data.items()) if isinstance(data, dict) else
             [(d.get("name"), d.get("checkpoint")) if isinstance(d, dict) else (None, None)
              for d in (data or [])])
    out = []
    for i, (name, ckpt) in enumerate(items):
        if not name or not ckpt:
            raise ProtocolError(f"{path}: entry {i + 1} needs a name and a checkpoint")
        p = Path(ckpt)
        out.append(Candidate(str(name), checkpoint=p if p.is_absolute() else path.parent / p))
    return out


def find_checkpoints(runs: str | Path) -> list[Candidate]:
    """Every final ``model.safetensors`` under ``runs`` (named by its folder)."""
    runs = Path(runs)
    out = []
    for p in sorted(runs.rglob("model.safetensors")):
        try:
            read_metadata(p)
        except CheckpointError as e:
            log.warning("skipping %s", e)
            continue
        out.append(Candidate(str(p.parent.relative_to(runs)) or p.stem, checkpoint=p))
    return out


def default_candidate() -> list[Candidate]:
    p = default_checkpoint_path()
    return [Candidate("default (shipped)", checkpoint=p)] if p.is_file() else []


def _same_population(a: Path, b: Path) -> bool:
    """Two stores hold the same people: the same folder, or two generations with the same
    generator record (``meta.json`` ``info``: generator, version, seed, subjects, ...)."""
    if a.resolve() == b.resolve():
        return True
    try:
        ia = json.loads((a / "meta.json").read_text()).get("info")
        ib = json.loads((b / "meta.json").read_text()).get("info")
    except (OSError, ValueError):
        return False
    return bool(ia) and ia == ib


def _check_training_subjects(extra: dict[str, Any], store_root: str | None,
                             eval_subjects: list[int], path: Path) -> None:
    data = extra.get("data") or {}
    trained = data.get("train_subjects")
    if not trained or store_root is None or not data.get("store"):
        return
    if not _same_population(Path(data["store"]), Path(store_root)):
        return  # another population: the same subject ids name other people
    seen = sorted(set(int(s) for s in trained) & set(eval_subjects))
    if seen:
        raise ProtocolError(f"{path}: trained on evaluation subjects {seen} of {store_root}; "
                            "anonymizers must be evaluated on subjects they never saw")


def build(c: Candidate, dummy: Dummy, store_root: str | None = None,
          eval_subjects: list[int] | None = None) -> Method:
    if c.checkpoint is not None:
        config, extra = read_metadata(c.checkpoint)
        _check_training_subjects(extra, store_root, eval_subjects or [], c.checkpoint)
        model = load_checkpoint(c.checkpoint)
        info = {"checkpoint": str(c.checkpoint), "config": config,
                "train_config": extra.get("train_config")}
        return method_from_model(c.name, model, dummy, info)
    model = build_model(dict(c.config or {}))
    return method_from_model(c.name, model, dummy, {"config": c.config})


# --------------------------------------------------------------------------------------------
# Sweeps
# --------------------------------------------------------------------------------------------


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, str):
        try:
            d = yaml.safe_load(d)
        except yaml.YAMLError:
            return {}
    if not isinstance(d, dict):
        return {}
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def sweeps(results: dict[str, Any]) -> list[tuple[str, list[str], list[str]]]:
    """(title, method names, point labels) for each one-parameter sweep among the results."""
    ms = results["methods"]
    out = []
    noise = sorted((n for n, r in ms.items() if r["info"].get("method") == "noise"),
                   key=lambda n: ms[n]["info"]["config"]["sigma"])
    if len(noise) >= 2:
        out.append(("Gaussian noise: σ sweep", ["original", *noise],
                    ["orig.", *[f"σ={ms[n]['info']['config']['sigma']:g}" for n in noise]]))
    by_method: dict[str, list[str]] = {}
    for n, r in ms.items():
        if r["info"].get("checkpoint"):
            by_method.setdefault(r["info"]["method"], []).append(n)
    for method, names in by_method.items():
        if len(names) < 2:
            continue
        flats = {n: {**_flat(ms[n]["info"].get("config")),
                     **_flat(ms[n]["info"].get("train_config"), "train.")} for n in names}
        keys = set.intersection(*(set(f) for f in flats.values()))
        varying = [k for k in sorted(keys) if len({flats[n][k] for n in names}) > 1
                   and not any(s in k for s in ("seed", "step", "iterations", "log", "every"))]
        if len(varying) == 1:
            k = varying[0]
            names = sorted(names, key=lambda n: flats[n][k])
            out.append((f"{method}: {k} sweep", names,
                        [f"{k.rsplit('.', 1)[-1]}={flats[n][k]:g}" for n in names]))
    return out


def _ascii_slug(text: str) -> str:
    text = text.replace("σ", "sigma").replace("α", "alpha").replace("β", "beta").lower()
    return "_".join("".join(c if c.isascii() and c.isalnum() else " " for c in text).split())


def plot_sweeps(results: dict[str, Any], img_dir: str | Path) -> list[Path]:
    paths = []
    for title, names, labels in sweeps(results):
        p = Path(img_dir) / f"tradeoff_{_ascii_slug(title.replace(' sweep', ''))}.png"
        report.tradeoff_plot(report.sweep_points(results, names, labels), p, title,
                             results["chance"])
        paths.append(p)
    return paths


def tsne_plots(method: Method, data, img_dir: str | Path, max_points: int = 600,
               seed: int = 0) -> list[Path]:
    """t-SNE of pooled H_action of test windows, coloured by action and by subject."""
    from streamtmr.eval.protocol import embeddings_of
    from streamtmr.eval.tsne import tsne

    x = data.test["joints"]
    idx = np.random.default_rng(seed).permutation(len(x))[:max_points]
    emb = embeddings_of(method.model, x[idx], method.window or x.shape[1])
    if "action" not in emb:
        return []
    y = tsne(emb["action"], seed=seed)
    slug = _ascii_slug(method.name)
    out = []
    for col in ("action", "subject"):
        p = Path(img_dir) / f"tsne_{slug}_{col}.png"
        report.scatter_2d(y, data.test[col][idx], p,
                          f"t-SNE of H_action ({method.name}), coloured by {col}")
        out.append(p)
    return out


def summary_lines(results: dict[str, Any]) -> list[str]:
    """One line per method for the terminal."""
    out = []
    for n, r in results["methods"].items():
        s, a = r["static"], r["adaptive"]
        q = r["quality"]
        mp = q.get("mpjpe_target_mm", q["mpjpe_source_mm"])
        link = a["linkage"]
        out.append(f"{n:>22}: re-ID static {100 * s['reid_top1']:5.1f}% adaptive "
                   f"{100 * a['reid_top1']:5.1f}% | linkage AUC {link['auc']:.2f}"
                   f"{' (degenerate)' if link['degenerate'] else ''} | action "
                   f"{100 * s['action_top1']:5.1f}% (retrained {100 * a['action_top1']:5.1f}%)"
                   f" | MPJPE {mp:6.1f} mm")
    return out

