"""The evaluation run behind ``streamtmr evaluate``, as named steps.

:func:`run_evaluation` takes an :class:`EvalRequest` (the command's options) and goes: settings
(:func:`eval_config`) → store (given, or a tiny SynthKinect one for ``quick``) → the methods
(:func:`collect_candidates`, built with :func:`streamtmr.eval.suite.build`) → the protocol
(:func:`streamtmr.eval.protocol.run_protocol`, with the result cache) → optional UTKinect transfer
→ plots and reports (:func:`write_outputs`). Errors meant for the user are ``ValueError``
subclasses (:class:`~streamtmr.eval.protocol.ProtocolError`, store and checkpoint errors) or
``KeyError`` for an unknown method; the command turns them into one-line messages.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from streamtmr.eval import protocol, report, suite
from streamtmr.eval.attackers import AttackerTraining
from streamtmr.models.registry import entry


@dataclass
class EvalRequest:
    """What to evaluate and where to write it (the options of ``streamtmr evaluate``)."""

    data: Path | None = None
    method: str | None = None           # one method (with "original")
    checkpoint: Path | None = None
    sigma: float = 0.05
    all: bool = False
    models: list[Path] = field(default_factory=list)
    study_out: Path | None = None
    methods: list[str] | None = None    # keep only these of the collected candidates
    cache: Path | None = None
    no_cache: bool = False
    runs: Path | None = Path("runs")
    sigmas: tuple[float, ...] = suite.DEFAULT_SIGMAS
    utkinect: Path | None = None
    utk_studies: bool = False
    utk_epochs: int = 30
    #: How UTKinect plays through the node: "sensor" (30 Hz clock) or "rows" (see realdata).
    utk_clock: str = "sensor"
    #: UTKinect people to evaluate on (None: all); see ``data.real_utkinect_subjects``.
    utk_subjects: tuple[int, ...] | None = None
    out: Path = Path("runs/eval")
    report: Path | None = None
    quick: bool = False
    window: int | None = None
    epochs: int | None = None
    width: int | None = None
    tsne: bool = False
    device: str = "cpu"
    seed: int = 0
    command: str = "streamtmr evaluate"
    #: Attacker seeds: each a full run of the protocol, reported as mean ± std (empty: seed).
    seeds: tuple[int, ...] = ()
    #: Re-ID attacker backbones; the strongest is the reported attack.
    attacker_archs: tuple[str, ...] = ("sgn",)
    #: Optional attacks to train besides re-ID and action ("attributes", "linkage").
    attacks: tuple[str, ...] = ("reid", "attributes", "linkage", "action")


def eval_config(r: EvalRequest) -> protocol.EvalConfig:
    """Protocol and attacker settings: the request's, else the defaults (tiny for ``quick``)."""
    q = r.quick
    attacker = AttackerTraining(width=r.width or (16 if q else 48),
                                epochs=r.epochs or (4 if q else 30), seed=r.seed,
                                device=r.device)
    return protocol.EvalConfig(window=r.window or (32 if q else 64),
                               train_stride=16 if q else 32, attacker=attacker,
                               linkage_pairs=400 if q else 2000, gap_sequences=2 if q else 6,
                               seed=r.seed, reid_archs=tuple(r.attacker_archs),
                               attacks=tuple(r.attacks))


def one_method(r: EvalRequest) -> list[suite.Candidate]:
    """The candidate of ``r.method``: a baseline from its config, a learned method from
    ``r.checkpoint`` or the shipped default when that is of this method."""
    from streamtmr.models.checkpoint import default_checkpoint_path, read_metadata

    if r.method == "original":
        return []
    if not entry(r.method).learned:
        return [suite.untrained_candidate(r.method, r.sigma)]
    ckpt = r.checkpoint
    if ckpt is None:
        default = default_checkpoint_path()
        if not default.is_file() or read_metadata(default)[0].get("method") != r.method:
            raise protocol.ProtocolError(f"--method {r.method} needs --checkpoint (the shipped "
                                         "default is missing or of another method)")
        ckpt = default
    return [suite.Candidate(r.method, checkpoint=ckpt)]


def collect_candidates(r: EvalRequest, arrays=()) -> list[suite.Candidate]:
    """Everything ``r.all`` collects, the listed models, or one method; then de-duplicated and
    narrowed to ``r.methods``."""
    if r.all:
        cands = suite.oracle_candidates(arrays) + suite.baseline_candidates(r.sigmas)
        cands += suite.default_candidate()
        for models in r.models:
            cands += suite.read_model_list(models, r.study_out)
        if r.runs and r.runs.is_dir():
            cands += suite.find_checkpoints(r.runs)
    elif r.models and r.method is None:
        cands = [c for models in r.models for c in suite.read_model_list(models, r.study_out)]
    elif r.method is None:
        raise protocol.ProtocolError("give --method, --models or --all")
    else:
        cands = one_method(r)
    cands = suite.unique_candidates(cands)
    return cands if r.methods is None else suite.select(cands, r.methods)


def utkinect_transfer(r: EvalRequest, cfg: protocol.EvalConfig, methods) -> dict[str, Any]:
    """Real-data transfer of the shipped default and the methods compared with it (the study
    runs too with ``utk_studies``); noise and the oracles are left out."""
    from streamtmr.eval.realdata import evaluate_utkinect

    real = [m for m in methods if not m.name.startswith("noise") and m.oracle is None
            and (r.utk_studies or not m.info.get("groups"))]
    utk = AttackerTraining(**{**cfg.attacker.as_dict(), "epochs": r.utk_epochs})
    try:
        return evaluate_utkinect(r.utkinect, real, utk, reid_archs=cfg.reid_archs,
                                 subjects=r.utk_subjects, clock=r.utk_clock)
    except ValueError as e:  # UTKFormatError is one; others name what the data lacks
        raise protocol.ProtocolError(str(e)) from None


def write_outputs(r: EvalRequest, results: dict[str, Any], data, methods) -> list[Path]:
    """Sweep plots (and t-SNE), ``results.json``, ``results.md`` and the report block."""
    img_dir = r.report.parent / "img" if r.report else r.out / "img"
    images = suite.plot_sweeps(results, img_dir)
    if r.tsne:
        for m in methods:  # the compared models; study runs are summarised in tables
            if m.model is not None and not m.info.get("groups"):
                images += suite.tsne_plots(m, data, img_dir)
    results["images"] = [str(p) for p in images]
    report.write_json(results, r.out / "results.json")
    base = r.report.parent if r.report else r.out
    text = report.document(results, [os.path.relpath(p, base) for p in images])
    (r.out / "results.md").write_text(text)
    if r.report:
        report.update_report(r.report, text)
    return images


def seeded(cfg: protocol.EvalConfig, seed: int) -> protocol.EvalConfig:
    """``cfg`` with attacker (and protocol) seed ``seed``."""
    return replace(cfg, seed=seed, attacker=replace(cfg.attacker, seed=seed))


def evaluate_seeds(r: EvalRequest, cfg: protocol.EvalConfig, data, data_path, methods,
                   log=print) -> dict[str, Any]:
    """The protocol (and UTKinect) once per attacker seed of ``r.seeds`` (or ``cfg``'s alone),
    each through the result cache; several seeds are aggregated to mean ± std
    (:func:`streamtmr.eval.protocol.aggregate_seeds`)."""
    seeds = list(r.seeds) or [cfg.seed]
    runs = []
    for seed in seeds:
        cfg_s = seeded(cfg, seed)
        cache = (None if r.no_cache else
                 suite.ResultCache(r.cache or r.out / "cache", cfg_s, data_path))
        res = protocol.run_protocol(data, methods, cfg_s, cache)
        if cache is not None:
            log(f"seed {seed}: cache {cache.root}: {len(cache.hits)} read back"
                + (f" ({', '.join(cache.hits)})" if cache.hits else "")
                + f", {len(cache.stored)} stored")
        if r.utkinect:
            res["utkinect"] = utkinect_transfer(r, cfg_s, methods)
        runs.append(res)
    return runs[0] if len(runs) == 1 else protocol.aggregate_seeds(runs, seeds)


def run_evaluation(r: EvalRequest, log=print) -> dict[str, Any]:
    """Evaluate (see the module docstring); ``log`` receives the progress lines."""
    if r.data is None and not r.quick:
        raise protocol.ProtocolError("give --data STORE (or --quick)")
    cfg = eval_config(r)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="streamtmr-eval-") as tmp:
        data_path = r.data
        if data_path is None:
            from streamtmr.data.synth import generate
            data_path = generate(Path(tmp) / "synth", n_subjects=9, n_actions=4, reps=2,
                                 seed=r.seed, progress=False)
        data = protocol.load_store(data_path, cfg)
        methods = [suite.build(c, data.dummy, str(data_path), data.info["eval_subjects"])
                   for c in collect_candidates(r, data.test)]
        log(f"evaluating {', '.join(['original'] + [m.name for m in methods])} on "
            f"{data.info['train_windows']} / {data.info['test_windows']} windows of "
            f"{len(data.info['eval_subjects'])} unseen subjects")
        results = evaluate_seeds(r, cfg, data, data_path, methods, log)
        results["machine"] = report.machine()
        results["command"] = r.command
        results["seconds"] = round(time.time() - t0, 1)
        write_outputs(r, results, data, methods)
    return results
