"""Which methods to evaluate, and the full evaluation run behind ``streamtmr evaluate``.

Methods come from: the baselines (``naive``, ``noise`` at one or several σ), checkpoints given
explicitly, checkpoints listed in a YAML/JSON file (``[{name, checkpoint}, ...]`` or
``{name: checkpoint}``) or trained by a study (``configs/studies.yaml``, whose groups, sweep
parameter and reference flag travel with each method into the results), every
``model.safetensors`` under a runs directory, and the shipped default model when it exists.
Sweeps (noise σ; a study's sweep groups; otherwise any config or training-config value that
varies across the checkpoints of one method, e.g. Moon α/β, TMR loss weights) get a trade-off
plot. :class:`ResultCache` keeps each method's results on disk between runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from streamtmr.dummy import Dummy
from streamtmr.eval import report
from streamtmr.eval.protocol import (
    ORACLE_ARRAYS,
    EvalConfig,
    Method,
    ProtocolError,
    method_from_model,
)
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
    """A method before it is built: a name and either a baseline config or a checkpoint, plus
    the study groups it belongs to (``param``/``value``: its setting in a sweep group;
    ``reference``: the row the others of its groups are compared with)."""

    name: str
    config: dict[str, Any] | None = None
    checkpoint: Path | None = None
    groups: tuple[str, ...] = ()
    param: str | None = None
    value: float | None = None
    reference: bool = False


def untrained_candidate(method: str, sigma: float = 0.05) -> Candidate:
    """A method built from its config alone (no checkpoint); noise at σ ``sigma`` metres."""
    if method == "noise":
        return Candidate(f"noise σ={sigma:g}", {"method": "noise", "sigma": float(sigma)})
    return Candidate(method, {"method": method})


def baseline_candidates(sigmas: tuple[float, ...] = DEFAULT_SIGMAS, naive: bool = True
                        ) -> list[Candidate]:
    out = [untrained_candidate("naive")] if naive else []
    return out + [untrained_candidate("noise", s) for s in sigmas]


def read_model_list(path: str | Path, study_out: str | Path | None = None) -> list[Candidate]:
    """A YAML/JSON list of checkpoints: ``[{name, checkpoint}]`` or ``{name: checkpoint}``
    (relative paths are relative to the list file), or a study file (a mapping with a ``runs``
    list, see :func:`study_candidates`; ``study_out`` overrides where its runs are)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ProtocolError(f"{path}: cannot read model list ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("runs"), list):
        return study_candidates(path, study_out)
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


def study_candidates(path: str | Path, out: str | Path | None = None) -> list[Candidate]:
    """The trained runs of a study file (``<out>/<name>/model.safetensors``; ``out`` defaults
    to the study's own), named by run and carrying its groups, ``param``/``value`` and
    ``reference``. Runs without a final checkpoint are skipped with a warning: studies may be
    partly trained."""
    from streamtmr.train.config import ConfigError
    from streamtmr.train.study import load_study

    try:
        study = load_study(path)
    except ConfigError as e:
        raise ProtocolError(str(e)) from None
    out = Path(out) if out is not None else None
    found, missing = [], []
    for run in study.runs:
        ckpt = study.run_dir(run, out) / "model.safetensors"
        if not ckpt.is_file():
            missing.append(run.name)
            continue
        found.append(Candidate(run.name, checkpoint=ckpt, groups=run.groups, param=run.param,
                               value=run.value, reference=run.reference))
    if missing:
        log.warning("%s: %d of %d runs have no model.safetensors under %s yet, skipped: %s",
                    path, len(missing), len(study.runs), out or study.out, ", ".join(missing))
    return found


def unique_candidates(cands: list[Candidate]) -> list[Candidate]:
    """Drop later candidates whose checkpoint is already listed (e.g. a study's run found again
    by the runs-folder search); two different methods under one name are an error."""
    out: list[Candidate] = []
    seen: dict[Path, str] = {}
    names: set[str] = set()
    for c in cands:
        if c.checkpoint is not None:
            key = Path(c.checkpoint).resolve()
            if key in seen:
                log.info("%s: same checkpoint as %s, evaluated once", c.name, seen[key])
                continue
            seen[key] = c.name
        if c.name in names:
            raise ProtocolError(f"two methods are named {c.name!r}"
                                + (f" (the second is {c.checkpoint})" if c.checkpoint else ""))
        names.add(c.name)
        out.append(c)
    return out


def select(cands: list[Candidate], names: list[str]) -> list[Candidate]:
    """The candidates named in ``names`` (in candidate order); unknown names are an error.
    ``original`` is always evaluated and may be named."""
    known = [c.name for c in cands]
    unknown = [n for n in names if n not in known and n != "original"]
    if unknown:
        raise ProtocolError(f"no method named {', '.join(map(repr, unknown))} (have "
                            f"{', '.join(['original', *known])})")
    wanted = set(names)
    return [c for c in cands if c.name in wanted]


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


ORACLE_NAMES = {"target": "ground truth (neutral tempo)",
                "target_sync": "ground truth (own tempo)"}


def oracle_candidates(arrays) -> list[Candidate]:
    """The store's ground-truth retargets as methods (:data:`protocol.ORACLE_ARRAYS`): what a
    perfect offline anonymizer (neutral tempo) and a perfect streaming one (the person's own
    tempo: it cannot run ahead of the sensor) would output."""
    return [Candidate(ORACLE_NAMES[a], {"method": "oracle", "array": a})
            for a in ORACLE_ARRAYS if a in arrays]


def build(c: Candidate, dummy: Dummy, store_root: str | None = None,
          eval_subjects: list[int] | None = None) -> Method:
    study = {"groups": list(c.groups), "param": c.param, "value": c.value,
             "reference": c.reference}
    if c.config is not None and c.config.get("method") == "oracle":
        return Method(c.name, None, None, None, {"config": c.config, **study},
                      oracle=c.config["array"])
    if c.checkpoint is not None:
        config, extra = read_metadata(c.checkpoint)
        _check_training_subjects(extra, store_root, eval_subjects or [], c.checkpoint)
        model = load_checkpoint(c.checkpoint)
        info = {"checkpoint": str(c.checkpoint), "config": config,
                "train_config": extra.get("train_config"),
                "real_subjects": list((extra.get("data") or {}).get("real_subjects") or []),
                **study}
        return method_from_model(c.name, model, dummy, info)
    model = build_model(dict(c.config or {}))
    return method_from_model(c.name, model, dummy, {"config": c.config, **study})


# --------------------------------------------------------------------------------------------
# Result cache
# --------------------------------------------------------------------------------------------

#: Part of every cache key: bump it when a change of the evaluation code changes results.
CACHE_VERSION = 1


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: Store arrays an evaluation reads (their bytes are part of the store's identity).
IDENTITY_ARRAYS = ("joints", *ORACLE_ARRAYS)


def store_identity(store_root: str | Path) -> str:
    """sha256 of what an evaluation reads from a store: ``index.csv``, ``meta.json`` without its
    list of arrays, and the bytes of the arrays in :data:`IDENTITY_ARRAYS` that it has. Adding
    another array (e.g. ``clean``) keeps the identity; regenerating the data changes it."""
    root = Path(store_root)
    h = hashlib.sha256()
    index = root / "index.csv"
    h.update(b"index.csv\0" + (index.read_bytes() if index.is_file() else b"") + b"\0")
    try:
        meta = json.loads((root / "meta.json").read_text())
    except (OSError, ValueError):
        meta = {}
    arrays = meta.pop("arrays", {}) if isinstance(meta, dict) else {}
    h.update(json.dumps(meta, sort_keys=True).encode() + b"\0")
    for name in IDENTITY_ARRAYS:
        p = root / f"{name}.f32"
        if name in arrays and p.is_file():
            h.update(name.encode() + b"\0" + _sha256_file(p).encode() + b"\0")
    return h.hexdigest()


class ResultCache:
    """One JSON file per evaluated method in ``root``, named by the sha256 of: the model (its
    checkpoint file's sha256, or the baseline's config; "original" = ``{"method":
    "original"}``), ``cfg.as_dict()`` (protocol and attacker settings), the store's identity
    (:func:`store_identity`), the window and :data:`CACHE_VERSION`.

    Evaluation is seeded throughout (see :func:`streamtmr.eval.protocol.run_protocol`), so a
    cached result equals a recomputed one on the same software and device (floating-point
    sums may differ across torch versions or thread counts). Entries are written to a
    temporary file and renamed, so several processes may share one cache. Methods with neither
    a checkpoint nor a config (built in code) are never cached. The method's name and study
    groups are not part of the key: they come from the current run.
    """

    def __init__(self, root: str | Path, cfg: EvalConfig, store_root: str | Path):
        self.root = Path(root)
        self.cfg = cfg.as_dict()
        self.window = cfg.window
        self.store = store_identity(store_root)
        self.hits: list[str] = []
        self.stored: list[str] = []
        self._digests: dict[tuple[str, int, int], str] = {}

    def _model_identity(self, method: Method) -> dict[str, Any] | None:
        info = method.info
        if info.get("checkpoint"):
            p = Path(info["checkpoint"])
            st = p.stat()
            memo = (str(p.resolve()), st.st_size, st.st_mtime_ns)
            if memo not in self._digests:
                self._digests[memo] = _sha256_file(p)
            return {"checkpoint_sha256": self._digests[memo]}
        if info.get("config") is not None:
            return {"config": info["config"]}
        if method.module is None:
            return {"config": {"method": "original"}}
        return None

    def key(self, method: Method) -> str | None:
        """The cache key of ``method`` (None: not cacheable)."""
        model = self._model_identity(method)
        if model is None:
            return None
        blob = json.dumps({"version": CACHE_VERSION, "model": model, "eval": self.cfg,
                           "data": self.store, "window": self.window},
                          sort_keys=True, default=report._json_default)
        return hashlib.sha256(blob.encode()).hexdigest()

    def path(self, method: Method) -> Path | None:
        key = self.key(method)
        return None if key is None else self.root / f"{key}.json"

    def get(self, method: Method) -> dict[str, Any] | None:
        p = self.path(method)
        if p is None or not p.is_file():
            return None
        try:
            result = json.loads(p.read_text())["result"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("%s: unreadable cache entry for %s (%s), evaluating again", p,
                        method.name, e)
            return None
        self.hits.append(method.name)
        return result

    def put(self, method: Method, result: dict[str, Any]) -> None:
        """Store ``result`` without what is derived from other methods (goals, retention) or
        from this run (info)."""
        p = self.path(method)
        if p is None:
            return
        body = {k: v for k, v in result.items()
                if k not in ("info", "goals", "action_retention")}
        text = json.dumps({"name": method.name, "info": method.info, "result": body},
                          indent=1, default=report._json_default)
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.stored.append(method.name)


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
        elif v is None or isinstance(v, (str, bool)):
            out[key] = v
    return out


#: Config keys that differ between runs without making them different models.
_NOT_A_SETTING = ("seed", "step", "iterations", "log", "every", "dir", "progress", "device",
                  "num_threads", "num_workers")


def sweeps(results: dict[str, Any]) -> list[tuple[str, list[str], list[str]]]:
    """(title, method names, point labels) for each one-parameter sweep among the results:
    the noise σ sweep, the study's sweep groups (:func:`report.study_sweeps`), then sweeps
    inferred from the one config value that varies across the other checkpoints of a method.
    Methods with study groups are left to their groups: no sweep is inferred over them."""
    ms = results["methods"]
    out = []
    noise = sorted((n for n, r in ms.items()
                    if r["info"].get("method") == "noise" and not r["info"].get("groups")),
                   key=lambda n: ms[n]["info"]["config"]["sigma"])
    if len(noise) >= 2:
        out.append(("Gaussian noise: σ sweep", ["original", *noise],
                    ["orig.", *[f"σ={ms[n]['info']['config']['sigma']:g}" for n in noise]]))
    out += report.study_sweeps(results)
    by_method: dict[str, list[str]] = {}
    for n, r in ms.items():
        if r["info"].get("checkpoint") and not r["info"].get("groups"):
            by_method.setdefault(r["info"]["method"], []).append(n)
    for method, names in by_method.items():
        if len(names) < 2:
            continue
        flats = {n: {**_flat(ms[n]["info"].get("config")),
                     **_flat(ms[n]["info"].get("train_config"), "train.")} for n in names}
        # Every setting counts, numeric or not, and one present in some configs only (a key
        # added later) differs: a sweep is inferred only where the runs differ in exactly one
        # numeric setting.
        keys = set.union(*(set(f) for f in flats.values()))
        varying = [k for k in sorted(keys) if not any(s in k for s in _NOT_A_SETTING)
                   and len({repr(flats[n].get(k, "<absent>")) for n in names}) > 1]
        if len(varying) == 1 and all(isinstance(flats[n].get(varying[0]), float)
                                     for n in names):
            k = varying[0]
            names = sorted(names, key=lambda n: flats[n][k])
            out.append((f"{method}: {k} sweep", names,
                        [f"{k.rsplit('.', 1)[-1]}={flats[n][k]:g}" for n in names]))
    return out


def _ascii_slug(text: str) -> str:
    text = text.replace("σ", "sigma").replace("α", "alpha").replace("β", "beta").lower()
    return "_".join("".join(c if c.isascii() and c.isalnum() else " " for c in text).split())


def plot_sweeps(results: dict[str, Any], img_dir: str | Path) -> list[Path]:
    paths: list[Path] = []
    for title, names, labels in sweeps(results):
        stem = f"tradeoff_{_ascii_slug(title.replace(' sweep', ''))}"
        p = Path(img_dir) / f"{stem}.png"
        i = 2
        while p in paths:  # two titles with the same ASCII slug
            p = Path(img_dir) / f"{stem}_{i}.png"
            i += 1
        report.tradeoff_plot(report.sweep_points(results, names, labels), p, title,
                             results["chance"])
        paths.append(p)
    return paths


def layout_2d(x: np.ndarray, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """scikit-learn's t-SNE of ``x [N, D]`` → ``[N, 2]`` (PCA initialisation; the perplexity is
    capped at ``(N − 1) / 3`` for small sets)."""
    from sklearn.manifold import TSNE

    x = np.asarray(x, np.float64)
    if len(x) < 5:
        raise ValueError(f"t-SNE needs at least 5 points, got {len(x)}")
    perplexity = min(perplexity, (len(x) - 1) / 3)
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def tsne_plots(method: Method, data, img_dir: str | Path, max_points: int = 600,
               seed: int = 0) -> list[Path]:
    """t-SNE of pooled H_action of test windows, coloured by action and by subject."""
    from streamtmr.eval.protocol import embeddings_of

    x = data.test["joints"]
    idx = np.random.default_rng(seed).permutation(len(x))[:max_points]
    emb = embeddings_of(method.model, x[idx], method.window or x.shape[1])
    if "action" not in emb:
        return []
    y = layout_2d(emb["action"], seed=seed)
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
        link = a.get("linkage")
        linkage = ("" if link is None else f" | linkage AUC {link['auc']:.2f}"
                   + (" (degenerate)" if link["degenerate"] else ""))
        out.append(f"{n:>22}: re-ID static {100 * s['reid_top1']:5.1f}% adaptive "
                   f"{100 * a['reid_top1']:5.1f}% ({a.get('reid_arch', 'sgn')}){linkage} | action "
                   f"{100 * s['action_top1']:5.1f}% (retrained {100 * a['action_top1']:5.1f}%)"
                   f" | MPJPE {mp:6.1f} mm")
    return out

