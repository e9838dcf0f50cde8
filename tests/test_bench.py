"""``streamtmr bench``: JSON output of a quick run, percentiles, machine description, targets."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import streamtmr
from bench.machine import SIMD_FLAGS, code_revision, cpu_simd, describe_machine, host_kind
from bench.node import late_frames
from bench.report import write_readme
from bench.stats import summarize_ns
from bench.suite import evaluate_targets
from streamtmr.commands.bench import int_list

ROOT = Path(__file__).resolve().parents[1]
LATENCY_KEYS = ("p50_ms", "p95_ms", "p99_ms")


def _positive_finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def _check_latency(d: dict, where: str) -> None:
    for k in LATENCY_KEYS:
        assert _positive_finite(d.get(k)), f"{where}: {k} = {d.get(k)!r}"
    assert d["p50_ms"] <= d["p95_ms"] <= d["p99_ms"] <= d["max_ms"], where


# -- percentiles ----------------------------------------------------------------------------

def test_percentiles_of_a_known_sample():
    s = summarize_ns(np.arange(1, 101) * 1_000_000)  # 1 … 100 ms
    assert s["n"] == 100
    assert s["mean_ms"] == pytest.approx(50.5)
    assert s["p50_ms"] == pytest.approx(50.5)      # between the two middle samples
    assert s["p95_ms"] == pytest.approx(95.05)     # rank 0.95 × 99 = 94.05 → 95 + 0.05
    assert s["p99_ms"] == pytest.approx(99.01)
    assert s["max_ms"] == pytest.approx(100.0)


def test_percentiles_order_free_and_edge_cases():
    rng = np.random.default_rng(0)
    a = rng.integers(1, 10**7, 999)
    assert summarize_ns(a) == summarize_ns(rng.permutation(a))
    assert summarize_ns([7_000_000]) == {"n": 1, "mean_ms": 7.0, "p50_ms": 7.0, "p95_ms": 7.0,
                                         "p99_ms": 7.0, "max_ms": 7.0}
    assert summarize_ns([]) == {"n": 0}
    with pytest.raises(ValueError, match="finite"):
        summarize_ns([1.0, float("nan")])
    with pytest.raises(ValueError, match="one-dimensional"):
        summarize_ns(np.ones((2, 2)))


# -- machine --------------------------------------------------------------------------------

def test_machine_description_has_the_keys():
    m = describe_machine()
    for key in ("cpu", "arch", "cores_logical", "cores_available", "memory_gib", "gpus", "os",
                "python", "libraries", "torch_threads", "load_average", "host_kind"):
        assert key in m, key
    for lib in ("torch", "onnxruntime", "numpy", "pyzmq", "tensorrt", "libzmq"):
        assert lib in m["libraries"], lib
    assert m["libraries"]["numpy"] == np.__version__
    assert m["cores_available"] >= 1 and isinstance(m["gpus"], list)
    assert m["load_average"] is None or len(m["load_average"]) == 3
    json.dumps(m)  # JSON-ready
    assert host_kind({"cores_available": 2, "gpus": []}) == "cpu-2c"
    assert set(m["streamtmr"]) == {"version", "commit", "dirty"}
    assert m["cpu_simd"] is None or set(m["cpu_simd"]) <= set(SIMD_FLAGS)


def test_cpu_simd_reads_the_flags_line_of_x86_and_arm():
    x86 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f\n"
    assert cpu_simd(x86) == ["sse4_2", "avx", "avx2", "fma", "avx512f"]
    no512 = x86.replace(" avx512f", "")
    assert "avx512f" not in cpu_simd(no512) and "avx2" in cpu_simd(no512)
    assert cpu_simd("processor\t: 0\nFeatures\t: fp asimd evtstrm sve\n") == ["asimd", "sve"]
    assert cpu_simd("processor\t: 0\n") == []


def test_the_code_revision_names_the_commit_and_local_changes(tmp_path):
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    assert code_revision(tmp_path) == {"version": streamtmr.__version__, "commit": None,
                                       "dirty": None}            # not a checkout
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}

    def run(*args):
        return subprocess.run([git, "-C", str(tmp_path), *args], env=env, check=True,
                              capture_output=True, text=True).stdout.strip()

    run("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    run("add", "a.py")
    run("commit", "-qm", "a")
    assert code_revision(tmp_path)["commit"] == run("rev-parse", "HEAD")
    assert code_revision(tmp_path)["dirty"] is False
    (tmp_path / "new.py").write_text("")                       # untracked: still clean
    assert code_revision(tmp_path)["dirty"] is False
    (tmp_path / "a.py").write_text("x = 2\n")
    assert code_revision(tmp_path)["dirty"] is True
    assert host_kind({"cores_available": 16, "gpus": [{"name": "NVIDIA H100 80GB HBM3"}]}) == \
        "nvidia-h100-80gb-hbm3-16c"


# -- option parsing and targets -------------------------------------------------------------

def test_int_list_ranges_and_lists():
    assert int_list("1-8") == list(range(1, 9))
    assert int_list("1,2,4,8") == [1, 2, 4, 8]
    assert int_list("6,1-3,2") == [1, 2, 3, 6]
    for bad in ("0", "3-1", "a", "1,,x"):
        with pytest.raises(Exception, match="range|integer"):
            int_list(bad)


def _scenario(bodies: int, p99: float, overruns: int = 0, over_budget: int = 0) -> dict:
    return {"bodies": bodies, "mode": "30Hz", "latency": {"p99_ms": p99}, "sent": 600,
            "overruns": overruns, "over_budget": over_budget, "late": overruns + over_budget}


def test_targets_are_evaluated_on_the_first_model():
    step = [{"model": "default", "engine": "onnxruntime", "bodies": 1, "p99_ms": 0.5, "n": 600},
            {"model": "default", "engine": "onnxruntime", "bodies": 6, "p99_ms": 2.5, "n": 600},
            {"model": "tmr-paper", "engine": "onnxruntime", "bodies": 1, "p99_ms": 0.1,
             "n": 600}]
    result = {
        "models": [{"label": "default"}, {"label": "tmr-paper"}],
        "step": {"rows": step},
        "node": {"runs": [
            {"model": "default", "engine": "onnxruntime",
             "scenarios": [_scenario(1, 2.5), _scenario(6, 4.0, over_budget=1)]},
            {"model": "tmr-paper", "engine": "onnxruntime",
             "scenarios": [_scenario(1, 100.0)]}]},
        "offline": {"rows": [{"model": "default", "engine": "onnxruntime",
                              "frames_per_s": 55_000.0},
                             {"model": "default", "engine": "torch", "frames_per_s": 9_000.0},
                             {"model": "tmr-paper", "engine": "onnxruntime",
                              "frames_per_s": 500.0}]},
    }
    t = evaluate_targets(result)
    # step 6 bodies over 2 ms; 6 bodies end to end: one frame late
    assert [r["met"] for r in t] == [True, False, True, False, True]
    assert all(r["model"] == "default" for r in t)
    assert t[-1]["engine"] == "onnxruntime"


def test_late_frames_are_counted_once():
    """A held copy published after the budget is an overrun, not also "over budget"."""
    result = {"overrun_seqs": np.array([3, 4]), "seqs": np.array([2, 3, 4, 5]),
              "node_lat_ns": np.array([1, 12, 2, 15]) * 1_000_000}
    assert late_frames(result, budget_ms=10.0) == {"overruns": 2, "over_budget": 1, "late": 3}


class _SlowEngine:
    """A real engine whose every call takes ``delay_s`` longer (a saturated machine)."""

    def __init__(self, engine, delay_s: float):
        self._engine, self._delay = engine, delay_s

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def run_latest(self, windows, k=1):
        time.sleep(self._delay)
        return self._engine.run_latest(windows, k)

    def step(self, frames, state):
        time.sleep(self._delay)
        return self._engine.step(frames, state)


def test_engine_specs_name_threads_and_the_general_session():
    from bench.engines import EngineSpecError, build_engine, parse_engine_specs
    from bench.models import resolve_model_spec

    specs, _ = parse_engine_specs(["onnxruntime@1", "onnxruntime@1/general", "torch"])
    assert [s.label for s in specs] == ["onnxruntime@1", "onnxruntime@1/general", "torch"]
    assert specs[1].options() == {"threads": 1, "single": False}
    engine = build_engine(resolve_model_spec("tmr-tiny"), specs[1])
    try:
        assert engine.describe()["single_session"] is False
    finally:
        engine.close()
    for bad in ("torch/general", "onnxruntime@0", "tensorflow"):
        with pytest.raises(EngineSpecError):
            parse_engine_specs([bad])


def test_search_split_tells_the_searching_calls_apart():
    """A matcher searches on the first frame and every ``search_every``-th one after: the
    split's share of searching calls is one in five, and a model without a search refuses."""
    from bench.engines import EngineSpec, build_engine, step_inputs
    from bench.models import resolve_model_spec
    from bench.motion import motion_clips
    from bench.search_split import split_steps

    frames = step_inputs(motion_clips(2), 1, frames=60)
    engine = build_engine(resolve_model_spec("motion_match-tiny"), EngineSpec("onnxruntime", 1))
    try:
        ns, searched = split_steps(engine, frames, 100)
    finally:
        engine.close()
    assert ns.shape == searched.shape == (100,) and (ns > 0).all()
    assert 0.15 <= searched.mean() <= 0.25, searched.mean()
    engine = build_engine(resolve_model_spec("tmr-stream-tiny"), EngineSpec("onnxruntime", 1))
    try:
        with pytest.raises(ValueError, match="not a motion matcher"):
            split_steps(engine, frames, 10)
    finally:
        engine.close()


UTKINECT = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "utkinect"


@pytest.mark.skipif(not UTKINECT.is_dir(), reason="needs the real recordings (../shared/data)")
def test_search_split_steps_real_people_on_the_sensor_clock():
    """``--utkinect``: every UTKinect segment on the sensor's clock, one after the other, one
    body: finite frames, more of them than the segments' recorded rows."""
    from bench.search_split import utkinect_frames
    from streamtmr.data.utkinect import read_utkinect

    frames = utkinect_frames(UTKINECT)
    segments = read_utkinect(UTKINECT)
    assert frames.shape[1:] == (1, 25, 3) and frames.dtype == np.float32
    assert np.isfinite(frames).all()
    assert len(frames) >= sum(len(seg.joints) for seg in segments)


def test_node_overruns_are_counted_once_over_zeromq():
    """Every frame overruns a 10 ms budget on a 25 ms engine: each is late once (the node's
    held copy is published after the budget, which used to count it a second time)."""
    from bench.engines import EngineSpec, build_engine
    from bench.models import resolve_model_spec
    from bench.motion import motion_clips
    from bench.node import bench_node

    engine = build_engine(resolve_model_spec("tmr-tiny"), EngineSpec("onnxruntime", 1))
    try:
        section, _ = bench_node(_SlowEngine(engine, 0.025), motion_clips(1), [1], 30.0,
                                frames=24, max_s=5.0, warmup_s=0.2, budget_ms=10.0)
    finally:
        engine.close()
    rate = next(s for s in section["scenarios"] if s["mode"] == "30Hz")
    assert rate["sent"] == 24 and rate["received"] == 24
    assert rate["overruns"] == rate["node_overrun_counter"]
    assert rate["overruns"] >= 20, rate  # nearly every frame overran
    assert rate["late"] == rate["overruns"] + rate["over_budget"] <= rate["sent"], rate
    assert rate["bodies_held"] >= 1  # held copies were published, and counted once


# -- the command ----------------------------------------------------------------------------

def test_quick_json_run_saves_and_plots(tmp_path):
    env = {**os.environ, "STREAMTMR_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    results = tmp_path / "results"
    plot = tmp_path / "lat.png"
    proc = subprocess.run(
        [sys.executable, "-m", "streamtmr", "bench", "--quick", "--json",
         "--models", "naive,tmr-tiny", "--node-models", "tmr-tiny", "--engines",
         "onnxruntime@1", "--batches", "1,2", "--step-batches", "1,2", "--bodies", "1,2",
         "--node-frames", "15", "--duration", "0.1", "--save", "--results-dir", str(results),
         "--plot", str(plot)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)  # nothing but the JSON on stdout
    for key in ("schema", "machine", "options", "models", "engines", "engine", "step", "node",
                "offline", "targets", "seconds"):
        assert key in r, key
    assert [m["label"] for m in r["models"]] == ["naive-tiny", "tmr-tiny"]
    for m in r["models"]:  # the exact model: label and sha256 of its weights
        assert len(m["sha256"]) == 64 and m["ident"] == f"{m['label']} sha256:{m['sha256'][:12]}"
    assert r["models"][0]["sha256"] != r["models"][1]["sha256"]
    sha = {m["label"]: m["sha256"][:12] for m in r["models"]}
    for part in ("engine", "offline"):
        assert all(x["model_sha256"] == sha[x["model"]] for x in r[part]["rows"]), part
    # both are windowed models: the step part names them and times nothing
    assert r["step"]["rows"] == [] and r["step"]["windowed_models"] == ["naive-tiny", "tmr-tiny"]

    rows = r["engine"]["rows"]
    assert {(x["model"], x["batch"]) for x in rows} == {
        (m, b) for m in ("naive-tiny", "tmr-tiny") for b in (1, 2)}
    for x in rows:
        _check_latency(x, f"engine {x['model']} b{x['batch']}")
        assert _positive_finite(x["windows_per_s"]) and x["n"] >= 1
    assert next(x for x in rows if x["model"] == "naive-tiny")["rel_model"] == 1.0

    (run,) = r["node"]["runs"]
    assert run["model"] == "tmr-tiny" and run["engine"] == "onnxruntime@1"
    assert run["model_sha256"] == sha["tmr-tiny"]
    assert {(s["bodies"], s["mode"]) for s in run["scenarios"]} == {
        (1, "30Hz"), (1, "max"), (2, "30Hz"), (2, "max")}
    for s in run["scenarios"]:
        where = f"node {s['bodies']} @ {s['mode']}"
        # the scenario's frame count, not a time slice (closed loop: at most, within its cap)
        assert s["sent"] == 15 if s["mode"] == "30Hz" else 1 <= s["sent"] <= 15, where
        assert s["received"] >= 1 and s["lost"] == s["sent"] - s["received"], where
        assert s["late"] == s["overruns"] + s["over_budget"] <= s["sent"], where
        _check_latency(s["latency"], where)
        for stage in ("decode", "window", "infer", "smooth", "encode", "send", "total"):
            assert stage in s["stages"], (where, stage)
            _check_latency(s["stages"][stage], f"{where} {stage}")
        # every frame the subscriber got carried each body of the frame
        assert s["bodies_received"] == s["received"] * s["bodies"], where
    assert r["node"]["runs"][0]["scenarios"][1]["achieved_hz"] > 0

    for x in r["offline"]["rows"]:
        assert _positive_finite(x["frames_per_s"]) and x["frames"] > 0

    saved = list(results.glob("*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text()) == r
    readme = (results / "README.md").read_text()
    assert saved[0].name in readme and f"naive-tiny sha256:{sha['naive-tiny']}" in readme
    assert plot.stat().st_size > 1000


def test_readme_lists_every_saved_run(tmp_path):
    (tmp_path / "broken.json").write_text("{")
    path = write_readme(tmp_path)
    text = path.read_text()
    assert "| broken.json | unreadable" in text


def test_unknown_model_is_a_user_error(capsys):
    from streamtmr.cli import main
    assert main(["bench", "--models", "no-such-method", "--parts", "engine"]) == 2
    assert "no-such-method" in capsys.readouterr().err


def test_cadence_study_times_both_paths_of_a_streaming_step():
    """bench.cadence: every gap × path cell has its calls and names the exact model."""
    from bench import cadence

    record = cadence.run("tmr-stream-tiny", "torch@1", [0.0, 1.0], calls=8, log=lambda s: None)
    rows = record["rows"]
    assert [(r["gap_ms"], r["path"]) for r in rows] == [
        (0.0, "inline"), (0.0, "worker"), (1.0, "inline"), (1.0, "worker"), (1.0, "spin")]
    assert all(r["n"] == 8 and r["p50_ms"] > 0 for r in rows)
    assert all(r["model"].startswith("tmr-stream-tiny sha256:") for r in rows)


def test_cadence_worker_path_raises_the_engines_error():
    """An engine error inside the node's worker reaches the study (not a silent sample)."""
    from bench.cadence import time_cadence
    from streamtmr.stream.node import _Worker

    class Failing:
        def init_state(self, n):
            return {"h": np.zeros((n, 2), np.float32)}

        def step(self, frames, state):
            if state["h"][0, 0] >= 2:
                raise ValueError("state 2 refused")
            return frames, {"h": state["h"] + 1}

    w = _Worker()
    try:
        with pytest.raises(ValueError, match="state 2 refused"):
            time_cadence(Failing(), np.zeros((4, 1, 25, 3), np.float32), 0.0, 3, "worker", w)
    finally:
        w.stop()


def test_cadence_cli_refuses_a_p99_from_too_few_calls(capsys):
    from bench import cadence

    with pytest.raises(SystemExit):
        cadence.main(["--calls", "100"])
    assert "--calls must be >= 600" in capsys.readouterr().err


def test_utk_clock_reports_both_clocks_per_model(tmp_path, capsys):
    """bench.utk_clock: the UTKinect half of the evaluation per clock, mean ± std over seeds."""
    from conftest import utk_folder

    from bench import utk_clock

    (tmp_path / "utk").mkdir()
    root = utk_folder(tmp_path / "utk", np.random.default_rng(0))
    out = tmp_path / "clock.json"
    assert utk_clock.main(["--utkinect", str(root), "--models", "default", "--names", "shipped",
                           "--seeds", "0,1", "--clocks", "sensor,rows", "--epochs", "1",
                           "--width", "8", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert set(rec["clocks"]) == {"sensor", "rows"} and rec["seeds"] == [0, 1]
    for clock, res in rec["clocks"].items():
        assert [r["clock"] for r in res["runs"]] == [clock, clock]
        s = res["summary"]["shipped"]
        per_seed = [r["methods"]["shipped"]["adaptive"]["reid_by_arch"][s["reid_arch"]]["top1"]
                    for r in res["runs"]]
        assert s["reid_top1"] == pytest.approx(np.mean(per_seed))
        assert s["reid_top1_std"] == pytest.approx(np.std(per_seed))
        assert set(s["reid_by_arch"]) == {"sgn", "transformer"} and 0 <= s["action_top1"] <= 1
        assert "original" in res["summary"]
    assert rec["machine"]["cpu"]
    with pytest.raises(SystemExit):
        utk_clock.main(["--utkinect", str(root), "--models", "default", "--names", "a", "b",
                        "--out", str(out)])
    assert "2 names for 1 models" in capsys.readouterr().err


def test_utk_tempo_plays_every_action_over_its_median_duration(tmp_path):
    """bench.utk_tempo: the re-timed copy holds every segment, each over its action's median
    duration with a row every ROW_STEP sensor frames, starting at the recorded first pose; the
    record attacks the recorded folder and the copy per seed."""
    from dataclasses import replace

    from conftest import utk_folder

    from bench import utk_tempo
    from streamtmr.data.utkinect import read_utkinect

    (tmp_path / "utk").mkdir()
    root = utk_folder(tmp_path / "utk", np.random.default_rng(0))
    seqs = read_utkinect(root)
    seqs[0].frame_ids[:] = 1 + 3 * np.arange(len(seqs[0].frame_ids))  # a slower walk: 40 frames
    durations = utk_tempo.median_durations(seqs)
    assert durations == {"walk": 14, "throw": 14}  # the median of 40, 14, 14, 14
    copy = read_utkinect(utk_tempo.write_retimed(seqs, durations, tmp_path / "copy"))
    assert [(c.subject, c.execution, c.action) for c in copy] == [
        (s.subject, s.execution, s.action) for s in seqs]
    for c, s in zip(copy, seqs, strict=True):
        assert np.all(np.diff(c.frame_ids) == utk_tempo.ROW_STEP)
        assert c.frame_ids[-1] - c.frame_ids[0] + 1 == 13  # 14 frames, a row every 4th
        assert np.allclose(c.joints20[0], s.joints20[0], atol=1e-6)
    # a motion at constant speed stays on its line, squeezed: a 40-frame walk played over 14
    # frames is at 0, 4/13, 8/13 and 12/13 of its way at the copy's rows
    start, end = np.zeros((20, 3), np.float32), np.full((20, 3), 1.3, np.float32)
    u = np.linspace(0.0, 1.0, 40, dtype=np.float32)[:, None, None]
    walk = replace(seqs[0], frame_ids=np.arange(1, 41), joints20=start + u * (end - start))
    (line,) = read_utkinect(utk_tempo.write_retimed([walk], {"walk": 14}, tmp_path / "line"))
    np.testing.assert_allclose(line.joints20[:, 0, 0], 1.3 * np.array([0, 4, 8, 12]) / 13,
                               atol=1e-5)
    out = tmp_path / "tempo.json"
    assert utk_tempo.main(["--utkinect", str(root), "--models", "default", "--seeds", "0",
                           "--epochs", "1", "--width", "8", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert [r["recordings"] for r in rec["rows"]] == ["as recorded", "one duration per action"]
    for r in rec["rows"]:
        assert set(r["results"]) == {"original", "default"}
        assert 0 <= r["results"]["default"]["reid_adaptive"] <= 1
    assert rec["models"][0].startswith("default sha256:")


def test_dropped_frames_cell_fills_what_the_source_dropped():
    """bench.dropped_frames: every second sensor frame delivered, in real time; the node steps
    the streaming state through each dropped one (filling on) or not at all (off)."""
    from bench.dropped_frames import cell
    from bench.motion import motion_clips
    from engines import create_engine
    from streamtmr.models.registry import model_class

    eng = create_engine("onnxruntime", model=model_class("tmr-stream").from_preset("tiny"),
                        window=None)
    clips = motion_clips(1, seed=0, min_frames=60)
    on = cell(eng, clips, every=2, fill=7, frames=20)
    off = cell(eng, clips, every=2, fill=0, frames=20)
    assert on["frames_out"] == off["frames_out"] == 20
    assert on["frames_filled"] + on["fill_skipped"] == 19 and on["frames_filled"] >= 15
    assert off["frames_filled"] == 0 and on["total_ms"]["count"] == 20


def test_load_time_times_build_and_cold_and_warm_opens():
    """bench.load_time: a cold open (empty engine cache: the export included) is timed apart
    from a warm one, and the caller's cache setting is restored."""
    import os

    from bench.load_time import measure

    before = os.environ.get("STREAMTMR_CACHE")
    row = measure("default", "onnxruntime", repeats=1)
    assert os.environ.get("STREAMTMR_CACHE") == before
    assert row["model"].startswith("default sha256:") and row["repeats"] == 1
    # timings are recorded, not judged here (speed targets live in the records)
    assert all(row[k]["max_s"] >= row[k]["median_s"] >= 0
               for k in ("build", "build_cached", "open_cold", "open_warm"))


def test_load_time_opens_an_uncarded_variant_only_when_told(tmp_path):
    """A variant measured for its cost (no privacy card) is refused like everywhere else,
    unless --allow-unevaluated, which the row records."""
    from bench.load_time import measure
    from engines.select import ModelRefused
    from streamtmr.models.checkpoint import save_checkpoint
    from streamtmr.models.motion_match import MotionMatching

    path = save_checkpoint(tmp_path / "mm.safetensors",
                           MotionMatching(MotionMatching.presets["tiny"]))
    with pytest.raises(ModelRefused, match="no privacy card"):
        measure(str(path), repeats=1)
    row = measure(str(path), repeats=1, allow_unevaluated=True)
    assert row["allow_unevaluated"] is True and row["open_warm"]["median_s"] >= 0


UTK = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "utkinect"


@pytest.mark.skipif(not UTK.is_dir(), reason=f"{UTK} absent (real recordings live in "
                    "../shared/data, outside a fresh clone)")
def test_box_tree_pruning_records_the_share_each_search_reads(tmp_path):
    """bench.box_tree_pruning: the real searches of a matcher, each reading a share in (0, 1]
    of the searchable frames, and the tree's build time, for the model it names."""
    import json

    from bench.box_tree_pruning import main
    from streamtmr.models.checkpoint import save_checkpoint
    from streamtmr.models.motion_match import MotionMatching

    path = save_checkpoint(tmp_path / "mm.safetensors",
                           MotionMatching(MotionMatching.presets["tiny"]))
    out = tmp_path / "rec.json"
    assert main(["--model", str(path), "--utkinect", str(UTK), "--every", "40",
                 "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["model"].startswith("mm.safetensors sha256:") and rec["searches"] > 20
    share, boxes = rec["share_read"], rec["boxes_read"]
    assert 0 < share["p50"] <= share["p90"] <= share["p99"] <= share["max"] <= 1
    assert 0 < boxes["p50"] <= boxes["p90"] <= boxes["p99"] <= boxes["max"] <= 1
    # a leaf whose frames are read passed the box test, so its box was read
    assert boxes["mean"] * rec["leaves"][0] * rec["leaves"][1] >= share["mean"] * \
        rec["searchable_frames"]


def test_step_cells_start_bodies_as_the_node_does():
    """A step cell's bodies start with the states the node gives bodies that enter together:
    all zero by default, a matcher's search phases spread with ``--stagger-search``; a model
    without a search starts from its zero state either way."""
    from bench.engines import fresh_states
    from engines import create_engine
    from streamtmr.models.registry import model_class

    mm = create_engine("torch", model=model_class("motion_match").from_preset("tiny"),
                       window=None)
    every = mm.stagger[1]
    staggered = fresh_states(mm, 6, staggered=True)["since_search"]
    assert sorted(int(-p) % every for p in staggered) == sorted(i % every for i in range(6))
    assert np.abs(staggered).max() <= every // 2       # centred on the evaluated schedule
    assert not fresh_states(mm, 6)["since_search"].any()       # the node's default
    tmr = create_engine("torch", model=model_class("tmr-stream").from_preset("tiny"),
                        window=None)
    a, b = fresh_states(tmr, 3, staggered=True), fresh_states(tmr, 3)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_the_gpu_lease_script_runs_end_to_end_as_a_cpu_dry_run(tmp_path):
    """bench/gpu_session_stream.sh (a lent GPU's one script) on the CPU: step records, the
    calibration, the training sized from it, and the trained model packed into $OUT."""
    import tarfile

    from streamtmr.data.synth import generate

    store = generate(tmp_path / "store", n_subjects=8, n_actions=3, progress=False)
    out = tmp_path / "out"
    env = {**os.environ, "DEVICE": "cpu", "MODELS": "default", "PRESET": "tiny",
           "CAL_ITERS": "18", "DATA": str(store), "OUT": str(out), "RUNS": str(tmp_path / "runs"),
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "STREAMTMR_CACHE": str(tmp_path / "cache")}
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run(["bash", str(root / "bench/gpu_session_stream.sh"), "60"], cwd=root,
                         env=env, capture_output=True, text=True, timeout=600)
    log = (out / "log.txt").read_text()
    assert res.returncode == 0 and "calibration failed" not in log, log[-3000:]
    step = json.loads((out / "bench" / "step-stream-cpu.json").read_text())
    assert {(r["bodies"], "p99_ms" in r) for r in step["rows"]} == {(1, True), (6, True)}
    cost = json.loads(next(x for x in log.splitlines() if x.startswith("{")))
    assert set(cost["seconds_per_iteration"]) == {"encoders", "decoder", "end_to_end"}
    with tarfile.open(out / "tmr_stream_paper_lease.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.endswith("tmr_stream_paper_lease/model.safetensors") for n in names)


def test_search_phase_starts_the_matchers_searches_at_the_given_phase():
    """bench.search_phase evaluates the matcher as the node's --stagger-search phases a body:
    its fresh since_search set to p, checked against the matcher's period."""
    import torch

    from bench.search_phase import phased
    from streamtmr.models.registry import model_class

    mm = model_class("motion_match").from_preset("tiny")
    half = int(mm.config["search_every"]) // 2
    zero = mm.init_state(3)["since_search"]
    assert torch.equal(phased(mm, -half).init_state(3)["since_search"], zero - half)
    with pytest.raises(ValueError, match="phase"):
        phased(model_class("motion_match").from_preset("tiny"), half + 1)
    with pytest.raises(ValueError, match="no motion-matching stage"):
        phased(model_class("tmr-stream").from_preset("tiny"), 0)


def test_gpu_parity_steps_tracks_as_the_node_does():
    """bench.gpu_parity's streaming parity steps tracks frame by frame from fresh states: the
    same published frames as the engine's whole-track form, for any back end."""
    from bench.gpu_parity import step_tracks
    from bench.motion import motion_clips, sample_windows
    from engines import create_engine
    from streamtmr.models.registry import model_class

    model = model_class("tmr-stream").from_preset("tiny").eval()
    tracks = np.ascontiguousarray(sample_windows(motion_clips(2, seed=0), 3, 20, seed=2))
    torch_eng = create_engine("torch", model=model, window=None, max_batch=4, threads=1)
    ort_eng = create_engine("onnxruntime", model=model, window=None, max_batch=4, threads=1)
    ref = torch_eng.run_tracks(tracks)
    stepped = step_tracks(torch_eng, tracks)
    assert stepped.shape == tracks.shape and not np.allclose(stepped[:, 1:], stepped[:, :-1])
    np.testing.assert_allclose(stepped, ref, atol=1e-5)
    np.testing.assert_allclose(step_tracks(ort_eng, tracks), ref, atol=1e-4)


def test_teacher_store_writes_the_teachers_pose_on_the_own_tempo_root(tmp_path):
    """bench.teacher_store: a store that links the original arrays and adds the teacher's
    published pose for the training people, moved and turned onto target_sync's root and hip
    facing; NaN for the people training never reads."""
    from bench.teacher_store import onto, write
    from streamtmr import skeleton
    from streamtmr.data.store import SkeletonStore
    from streamtmr.data.synth import generate

    src = SkeletonStore(generate(tmp_path / "store", n_subjects=8, n_actions=2, progress=False))
    out = SkeletonStore(write("default", src.root, tmp_path / "teach", "target_t",
                              progress=False))
    assert set(out.array_names) == set(src.array_names) | {"target_t"}
    assert np.array_equal(out.array("joints"), src.array("joints"))
    train = set(src.meta["splits"]["anonymizer_train"])
    y, sync = out.array("target_t"), src.array("target_sync")
    for r in out.rows:
        s = slice(r["offset"], r["offset"] + r["length"])
        if r["subject"] not in train:
            assert np.isnan(y[s]).all()
            continue
        np.testing.assert_allclose(y[s][:, skeleton.ROOT], sync[s][:, skeleton.ROOT], atol=1e-6)
        turn = np.angle(np.exp(1j * (skeleton.facing_angle(y[s])
                                     - skeleton.facing_angle(sync[s]))))
        assert np.abs(turn).max() < 1e-4
        assert np.abs(y[s] - sync[s]).max() > 0.01        # the teacher's pose, not the target
    with pytest.raises(ValueError, match="already has"):
        write("default", src.root, tmp_path / "again", "target_sync", progress=False)
    pose = sync[:5]
    moved = onto(pose + np.float32([1, 0, 2]), pose)
    np.testing.assert_allclose(moved, pose, atol=1e-5)


def test_pair_render_records_both_settings(tmp_path):
    """bench.pair_render times a batch's pairs in the training process and in a pool, and
    records which machine it ran on."""
    from bench.pair_render import main

    out = tmp_path / "pairs.json"
    assert main(["--pairs", "2", "--workers", "1", "--batches", "2", "--rounds", "1",
                 "--window", "16", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert [(r["setting"], r["n"]) for r in record["rows"]] == [("inline", 2), ("1 workers", 2)]
    assert all(r["p50_ms"] > 0 for r in record["rows"]) and record["machine"]["cpu"]


def test_jitter_is_zero_for_steady_motion_and_sees_a_spike():
    """bench.jitter: the distance of a frame from its neighbours' mean, in mm."""
    from bench.jitter import jitter_mm

    t = np.arange(20, dtype=np.float32)[:, None, None]
    steady = np.broadcast_to(0.01 * t * np.float32([1, 0, 0]), (20, 25, 3)).copy()
    assert jitter_mm(steady) == pytest.approx((0.0, 0.0), abs=1e-3)  # float32 rounding
    spike = steady.copy()
    spike[10, 7] += np.float32([0, 0.02, 0])   # one hand, one frame, 2 cm
    mean, hands_p95 = jitter_mm(spike)
    # the spiked frame is 20 mm off, each neighbour 10 mm: 40 mm over 18 frames x 25 joints
    assert mean == pytest.approx(40.0 / (18 * 25), rel=1e-4)
    assert hands_p95 > 0


def test_oracle_moves_rewrite_only_the_own_tempo_truth(tmp_path):
    """bench.oracle_moves: a hard-linked store copy whose own-tempo truth is each frame's
    nearest atom with the dummy's bones, placed by the truth or, one part at a time, by the
    source; everything else is the store's own bytes."""
    import torch

    from bench.oracle_moves import main
    from streamtmr import skeleton
    from streamtmr.data import synth
    from streamtmr.data.store import SkeletonStore
    from streamtmr.dummy import default_dummy

    data = synth.generate(tmp_path / "s", n_subjects=2, n_actions=2, views=(0,), reps=1,
                          seed=5, progress=False)
    assert main(["--data", str(data), "--variants", "atoms,source_root,in_place",
                 "--out", str(tmp_path / "moves")]) == 0
    truth = SkeletonStore(data)
    dummy = torch.from_numpy(np.array(default_dummy().lengths, np.float32))
    for variant in ("atoms", "source_root", "in_place"):
        copy = SkeletonStore(tmp_path / "moves" / variant)
        assert os.path.samefile(copy.root / "joints.f32", data / "joints.f32")
        assert len(copy) == len(truth) >= 4
        for a, b in zip(truth, copy, strict=True):
            t, q = torch.tensor(np.asarray(a.arrays["target_sync"])), \
                torch.tensor(np.asarray(b.arrays["target_sync"]))
            assert torch.allclose(skeleton.bone_lengths(q)[:, 1:], dummy[1:].expand(len(q), 24),
                                  atol=1e-5)
            root, src = q[:, skeleton.ROOT, [0, 2]], a.joints[:, skeleton.ROOT][:, [0, 2]]
            if variant == "atoms":   # near the truth, at its root
                assert float((q - t).norm(dim=-1).mean()) < 0.06
                assert torch.allclose(root, t[:, skeleton.ROOT, [0, 2]], atol=1e-5)
            elif variant == "source_root":
                assert np.allclose(root.numpy(), src, atol=1e-5)
            else:
                assert np.allclose(root.numpy(), src[:1].repeat(len(src), 0), atol=1e-5)


def test_atom_choice_scores_the_choice_against_the_targets_nearest_atom(tmp_path):
    """bench.atom_choice: a chooser that always picks one atom agrees exactly on the frames
    whose own-tempo target is nearest to that atom, and its error is never below the nearest
    atom's, and it is the same for the two people of a pair where a chooser that reads the
    motion is not; the record names the checkpoint."""
    import torch

    from bench.atom_choice import (
        agreement,
        eval_recordings,
        main,
        off_action,
        pair_agreement,
    )
    from streamtmr.data import synth
    from streamtmr.data.store import SkeletonStore
    from streamtmr.dummy import default_dummy
    from streamtmr.models.checkpoint import save_checkpoint
    from streamtmr.models.pose_atoms import (
        action_table,
        heading_directions,
        init_chooser,
        store_atoms,
    )
    from streamtmr.models.registry import model_class

    data = synth.generate(tmp_path / "s", n_subjects=4, n_actions=2, views=(0,), reps=1,
                          seed=5, progress=False)
    torch.manual_seed(0)
    model = model_class("tmr-stream").from_preset("tiny", pose_atoms=8).eval()
    init_chooser(model, store_atoms(data, 8, array="target_sync", split="eval"))
    recordings = eval_recordings(data, 10)
    assert recordings and all(len(s) == len(t) for _, s, t in recordings)
    targets = torch.cat([heading_directions(t).flatten(1) for _, _, t in recordings])
    nearest = torch.cdist(targets, model.decoder.atoms.flatten(1)).argmin(1)
    j = int(nearest.bincount().argmax())          # the atom most frames are nearest to
    with torch.no_grad():
        model.decoder.choose.weight.zero_()
        model.decoder.choose.bias.copy_(-torch.arange(8.0))
        model.decoder.choose.bias[j] = 10.0
    lengths = torch.from_numpy(default_dummy().lengths.copy())
    got = agreement(model, lengths, recordings)
    assert got["frames"] == len(targets)
    assert got["agreement"] == pytest.approx(float((nearest == j).float().mean()), abs=1e-4)
    assert 0 < got["agreement"] < 1
    # the top five logits: atom j and atoms 0-3 (j's rank aside)
    top5 = {j, *[k for k in range(8) if k != j][:4]}
    assert got["top5"] == pytest.approx(
        float(torch.isin(nearest, torch.tensor(sorted(top5))).float().mean()), abs=1e-4)
    assert got["chosen_error"] >= got["nearest_error"] > 0
    assert got["person_agreement_min"] <= got["agreement"] <= got["person_agreement_max"]
    # off the action: the one atom chosen is off exactly in the recordings of an action whose
    # set lacks it
    table = action_table(data, model.decoder.atoms, 2)
    assert table.shape == (2, 8) and table.sum(1).min() > 0 and table[:, j].max() == 1
    rows = SkeletonStore(data).rows_of("eval", view=0)[:10]
    frames = {a: sum(r["length"] for r in rows if r["action"] == a) for a in (0, 1)}
    assert frames[0] and frames[1]
    got_off = off_action(model, lengths, data, 10, table)
    expected = sum(frames[a] for a in (0, 1) if table[a, j] == 0) / sum(frames.values())
    assert got_off["off_action"] == pytest.approx(expected, abs=1e-4)
    lacking = table.clone()
    lacking[0, j], lacking[1, j] = 0.0, 1.0
    lacking = off_action(model, lengths, data, 10, lacking)
    assert lacking["off_action"] == pytest.approx(frames[0] / sum(frames.values()), abs=1e-4)
    assert lacking["person_off_action_min"] <= lacking["off_action"]
    with torch.no_grad():  # a head sure of action 0 everywhere: right on action 0's frames
        model.action_encoder.head.weight.zero_()
        model.action_encoder.head.bias.copy_(-10.0 * (torch.arange(8) != 0))
    assert off_action(model, lengths, data, 10, table)["action_frames"] == pytest.approx(
        frames[0] / sum(frames.values()), abs=1e-4)
    # between people: a choice that reads nobody is the same for both people of every pair
    alike = pair_agreement(model, lengths, 3)
    assert alike == {"pairs": 3, "pair_agreement": 1.0, "pair_kl": 0.0}
    path = save_checkpoint(tmp_path / "atoms.safetensors", model, {})
    with torch.no_grad():  # one that reads the motion differs between them
        model.decoder.choose.weight.normal_(0.0, 3.0)
    apart = pair_agreement(model, lengths, 3)
    assert apart["pair_agreement"] < 1.0 and apart["pair_kl"] > 0.01
    assert main(["--data", str(data), "--models", str(path), "--recordings", "10",
                 "--pairs", "2", "--out", str(tmp_path / "rec.json")]) == 0
    record = json.loads((tmp_path / "rec.json").read_text())
    assert record["rows"][0]["model"].startswith(f"{path} sha256:")
    assert record["rows"][0]["agreement"] == got["agreement"]
    assert record["rows"][0]["pair_agreement"] == 1.0
    assert record["rows"][0]["off_action"] == got_off["off_action"]


def test_streaming_parity_is_reported_per_performance(tmp_path):
    """bench.parity streams each held-out performance and compares it with the parallel pass
    and with ONNX Runtime's step, per performance; a deterministic model agrees everywhere."""
    import torch

    from bench.parity import parity
    from streamtmr.models.checkpoint import save_checkpoint
    from streamtmr.models.registry import model_class

    torch.manual_seed(0)
    model = model_class("tmr-stream").from_preset("tiny")
    ckpt = save_checkpoint(tmp_path / "tiny.safetensors", model, {})
    spec = {"subjects": 2, "actions": 1, "views": [0], "reps": 1, "seed": 5}
    out = parity(ckpt, onnx_count=1, spec=spec)
    assert out["performances"] == 2 == len(out["per_performance"])
    assert out["frames"] == sum(r["frames"] for r in out["per_performance"]) > 0
    assert out["performances_within_1mm"] == 2 and out["step_vs_forward_max_m"] < 1e-4
    assert "onnx_vs_torch_step_max_m" in out["per_performance"][0]
    assert "onnx_vs_torch_step_max_m" not in out["per_performance"][1]
    assert out["onnx_vs_torch_step_max_m"] < 1e-4


def test_mirror_at_random_swaps_the_sides_of_about_half_the_tracks_in_place():
    """bench.root_channel_real: the mirrored variants reflect a fixed half of the tracks left to
    right about their first root (the right hand's path becomes the left's, the first root stays)
    and leave the others as they are; the same draw every run."""
    from bench.root_channel_real import mirror_at_random
    from streamtmr import skeleton

    rng = np.random.default_rng(0)
    tracks = [(rng.normal(size=(12, 25, 3)) + [1.0, 0.0, 3.0]).astype(np.float32)
              for _ in range(40)]
    out = mirror_at_random(tracks)
    flipped = [not np.array_equal(a, b) for a, b in zip(tracks, out, strict=True)]
    assert 10 < sum(flipped) < 30 and all(t.dtype == np.float32 for t in out)
    assert [not np.array_equal(a, b) for a, b in zip(tracks, mirror_at_random(tracks),
                                                     strict=True)] == flipped
    i = flipped.index(True)
    a, b = tracks[i], out[i]
    r, left = skeleton.JOINT["HandRight"], skeleton.JOINT["HandLeft"]
    np.testing.assert_allclose(b[0, skeleton.ROOT], a[0, skeleton.ROOT], atol=1e-5)
    x0 = a[0, skeleton.ROOT, 0]
    np.testing.assert_allclose(b[:, left, 0], 2 * x0 - a[:, r, 0], atol=1e-5)
    np.testing.assert_allclose(b[:, left, 1:], a[:, r, 1:], atol=1e-6)


def test_merged_atoms_publish_one_pose_per_cluster_and_choose_as_before(tmp_path):
    """bench.merged_atoms: the copy's atoms take only ``clusters`` distinct unit-bone poses, each
    atom its cluster's (nearer to it than any other centre), and everything else, the chooser
    included, is the model's."""
    import torch
    from test_tmr_stream import synth_track

    from bench.merged_atoms import main
    from streamtmr.models.checkpoint import load_checkpoint, save_checkpoint
    from streamtmr.models.pose_atoms import heading_directions, init_chooser, kmeans_atoms
    from streamtmr.models.registry import model_class

    torch.manual_seed(0)
    model = model_class("tmr-stream").from_preset("tiny", pose_atoms=24)
    init_chooser(model, kmeans_atoms(heading_directions(synth_track(120)), 24))
    base = save_checkpoint(tmp_path / "atoms.safetensors", model, {})
    assert main(["--model", str(base), "--clusters", "6", "--out",
                 str(tmp_path / "m.safetensors")]) == 0
    copy = load_checkpoint(tmp_path / "m.safetensors")
    poses = copy.decoder.atoms
    distinct = torch.unique(poses.flatten(1), dim=0)
    assert len(distinct) == 6
    norms = torch.linalg.vector_norm(poses[:, 1:], dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    d = torch.cdist(model.decoder.atoms.flatten(1), distinct)
    own = torch.cdist(model.decoder.atoms.flatten(1), poses.flatten(1)).diagonal()
    assert torch.allclose(own, d.min(1).values, atol=1e-5)  # each atom went to its nearest
    for k, v in model.state_dict().items():
        if k != "decoder.atoms":
            assert torch.equal(copy.state_dict()[k], v), k


def test_utk_recognised_controls_on_synthkinect_as_a_v1_sensor_would_record_it(matcher_store):
    """bench.utk_recognised's control: the recorder keeps a frame every 2-8 and the clock
    interpolates the rest (the length kept, a constant-speed motion unchanged); the head reads
    the store's evaluation recordings in each variant, the first as they are."""
    import torch

    from bench import utk_recognised as U
    from streamtmr.models.checkpoint import resolve_model

    line = np.linspace(0, 1, 40, dtype=np.float32)[:, None, None] * np.ones((1, 25, 3),
                                                                            np.float32)
    assert np.allclose(U.as_recorded(line, np.random.default_rng(0)), line, atol=1e-6)
    wave = np.sin(np.arange(40, dtype=np.float32))[:, None, None] * np.ones((1, 25, 3),
                                                                           np.float32)
    rec = U.as_recorded(wave, np.random.default_rng(0))
    assert rec.shape == wave.shape and not np.allclose(rec, wave)
    assert np.allclose(rec[[0, -1]], wave[[0, -1]])
    model = resolve_model("default").eval()
    control = U.synth_control(model, str(matcher_store.root), count=3)
    assert list(control) == ["as recorded", "Kinect v1 joints",
                             "Kinect v1 joints, UTKinect's frames kept"]
    rows = matcher_store.rows_of("eval", view=0)[:3]
    hits = []
    with torch.no_grad():
        for r in rows:
            x = np.array(matcher_store.array("joints")[r["offset"]:r["offset"] + r["length"]])
            h = model.encode_action(torch.from_numpy(x)[None])[0].h
            hits.append(model.action_encoder.head(h)[0, U.WARM_UP:].argmax(-1).numpy()
                        == r["action"])
    assert control["as recorded"]["frames"] == round(float(np.concatenate(hits).mean()), 4)
    assert all(v["count"] == 3 for v in control.values())


def test_utk_recognised_scores_how_person_specific_the_recognised_action_is(tmp_path):
    """bench.utk_recognised: labels that follow the person re-identify everyone and agree
    within a person, labels that follow only the action re-identify at chance; the record
    names each segment's recognised action, read by the model's head on the test window."""
    import torch
    from conftest import utk_folder

    from bench import utk_recognised as U
    from streamtmr.data.utkinect import on_sensor_clock, read_utkinect
    from streamtmr.models.checkpoint import resolve_model

    people = np.repeat([1, 2, 3], 4)
    runs = np.tile([1, 1, 2, 2], 3)
    actions = np.tile([0, 1, 0, 1], 3)
    own = U.label_scores(people, runs, actions, people * 10 + actions)
    assert own == {"same_person": 1.0, "other_people": 0.0, "label_reid": 1.0,
                   "chance": round(1 / 3, 4)}
    alike = U.label_scores(people, runs, actions, actions)
    assert alike["label_reid"] == pytest.approx(1 / 3, abs=1e-4)
    assert alike["same_person"] == alike["other_people"] == 1.0
    # one person's run recognised otherwise: nobody is alike there, so that guess is chance
    mixed = people * 10 + actions
    mixed[0] = 99
    scores = U.label_scores(people, runs, actions, mixed)
    assert scores["same_person"] == pytest.approx(5 / 6, abs=1e-4)
    assert scores["label_reid"] == pytest.approx((10 + 2 / 3) / 12, abs=1e-4)

    (tmp_path / "utk").mkdir()
    root = utk_folder(tmp_path / "utk", np.random.default_rng(0))
    out = tmp_path / "r.json"
    assert U.main(["--model", "default", "--utkinect", str(root), "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["segments"] == 8 and record["people"] == 2 and record["mapped"] is None
    assert record["model"].startswith("default sha256:")
    model = resolve_model("default").eval()
    seqs = read_utkinect(root)
    with torch.no_grad():
        x = torch.from_numpy(on_sensor_clock(seqs[3].joints, seqs[3].frame_ids))[None]
        best = model.action_encoder.head(model.encode_action(x)[0].h)[0].argmax(-1)
    rows = seqs[3].frame_ids - seqs[3].frame_ids[0]  # 14 rows: the whole segment is the window
    want = np.bincount(best[rows].numpy()).argmax()
    assert record["recognised"][3]["recognised"] == int(want)


def test_utk_real_head_refits_only_the_head_and_names_the_real_people_it_saw(tmp_path):
    """bench.utk_real_head: a linear head fits separable features; the copy differs from its
    base in the action head alone, each frame labelled with its action's stand-in, and names
    the UTKinect people it was fitted on, so that the evaluation refuses it on them."""
    import torch
    from conftest import utk_folder

    from bench import utk_real_head as H
    from streamtmr.data.synth_motion import ACTION_SPECS
    from streamtmr.data.utkinect import read_utkinect
    from streamtmr.eval.protocol import Method
    from streamtmr.eval.realdata import _check_unseen
    from streamtmr.models.checkpoint import load_checkpoint, model_path, read_metadata

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=g) * 4
    labels = torch.arange(3).repeat_interleave(20)
    feats = centres[labels] + 0.1 * torch.randn(60, 8, generator=g)
    assert H.refit_head(torch.nn.Linear(8, 3), feats, labels) == 1.0

    (tmp_path / "utk").mkdir()
    root = utk_folder(tmp_path / "utk", np.random.default_rng(0), subjects=(1, 2, 3))
    seqs = read_utkinect(root)
    with pytest.raises(ValueError, match="walk_towards"):
        H.refit_on_utkinect(load_checkpoint(model_path("default")).eval(), seqs,
                            ["wave", "throw"])
    out = tmp_path / "head.safetensors"
    assert H.main(["--base", str(model_path("default")), "--utkinect", str(root),
                   "--subjects", "1", "2", "--out", str(out)]) == 0
    base, copy = load_checkpoint(model_path("default")), load_checkpoint(out)
    changed = {k for k, v in base.state_dict().items()
               if not torch.equal(v, copy.state_dict()[k])}
    assert changed and changed <= {"action_encoder.head.weight", "action_encoder.head.bias"}
    _, extra = read_metadata(out)
    fit = extra["utk_real_head"]
    assert fit["subjects"] == [1, 2] and fit["frames"] == 2 * 2 * (14 + 14)  # runs, actions
    assert extra["data"]["real_subjects"] == ["utkinect:s01", "utkinect:s02"]
    names = list(ACTION_SPECS)
    frames = H.frame_features(copy.eval(), [s for s in seqs if s.subject < 3])
    with torch.no_grad():
        got = [copy.action_encoder.head(f).argmax(-1) for f in frames]
    want = [names.index("walk_towards"), names.index("throw")] * 4
    hit = np.mean([float((g_ == w).float().mean()) for g_, w in zip(got, want, strict=True)])
    assert hit == pytest.approx(fit["accuracy_after"], abs=1e-3)
    method = Method("copy", copy, info={"real_subjects": extra["data"]["real_subjects"]})
    with pytest.raises(ValueError, match="never saw"):
        _check_unseen([method], {2, 3})
    _check_unseen([method], {3})
