"""Presenting results: rich tables, a latency histogram, saved JSON and the results README."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from bench.stats import MIN_P99_SAMPLES
from streamtmr.eval.report import save_figure

RESULTS_DIR = Path(__file__).resolve().parent / "results"
STAGES = ("decode", "window", "infer", "smooth", "encode", "send", "total")


def _ms(d: dict[str, Any] | None, key: str) -> str:
    v = (d or {}).get(key)
    return "-" if v is None else f"{v:.2f}"


def _rel(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}×"


# ------------------------------------------------------------------------------------------
# Terminal
# ------------------------------------------------------------------------------------------

def render(result: dict[str, Any], console) -> None:
    """Print the run on ``console``: the header, then one table per part, as rich tables on a
    terminal and as plain Markdown (never cut to the width) when the output is redirected."""
    plain = not console.is_terminal
    if plain:
        console.soft_wrap = True  # redirected: long lines stay whole
    _print_header(result, console)
    for part in (_engine_tables, _step_tables, _node_tables, _offline_tables, _target_tables):
        for table in part(result):
            if isinstance(table, str):  # a note under a table (rich markup)
                console.print(_plain(table) if plain else table)
            elif plain:
                console.print(markdown_table(table), markup=False, highlight=False)
            else:
                console.print(table)


def _plain(cell: Any) -> str:
    from rich.text import Text

    text = cell.plain if isinstance(cell, Text) else Text.from_markup(str(cell)).plain
    return re.sub(r"\s+", " ", text).replace("|", "\\|").strip()


def markdown_table(table) -> str:
    """A rich ``Table`` as a Markdown table (its title in bold above, its caption below)."""
    heads = [_plain(c.header) for c in table.columns]
    cols = [[_plain(v) for v in c.cells] for c in table.columns]
    lines = [f"**{_plain(table.title)}**", ""] if table.title else []
    lines += ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(row) + " |" for row in zip(*cols)]
    if table.caption:
        lines += ["", _plain(table.caption)]
    return "\n".join(lines) + "\n"


def _p99(d: dict[str, Any] | None) -> str:
    """p99 in ms, marked ``*`` when fewer than :data:`MIN_P99_SAMPLES` samples back it."""
    text = _ms(d, "p99_ms")
    n = (d or {}).get("n", (d or {}).get("count"))
    return text + ("*" if text != "-" and n is not None and n < MIN_P99_SAMPLES else "")


def _ident(result: dict[str, Any], label: str) -> str:
    md = next((m for m in result.get("models", []) if m["label"] == label), None)
    return md.get("ident", label) if md else label


def _print_header(result: dict[str, Any], console) -> None:
    m = result["machine"]
    gpu = ", ".join(g["name"] for g in m["gpus"]) or "none"
    console.print(f"[bold]streamtmr bench[/bold] {result['started']}  ({result['seconds']} s)")
    simd = " ".join(m.get("cpu_simd") or []) or "unknown"  # absent in records before stop 40
    console.print(f"machine: {m['cpu']} ({simd}) · {m['cores_available']} cores · "
                  f"{m['memory_gib']} GiB · GPU {gpu} · {m['os']}")
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v)
    console.print(f"python {m['python']} · {libs}")
    console.print(f"load average at start {m['load_average']}, at end "
                  f"{result.get('load_average_end')} (shared machine: figures include it)")
    for md in result["models"]:
        params = f"{md['params']:,} params" if md.get("params") else ""
        console.print(f"model {md.get('ident', md['label'])}: {md['note']}; window "
                      f"{md['window']}, {params}")
    for k, v in result["engines"]["unavailable"].items():
        console.print(f"[dim]engine {k} not benchmarked: {v}[/dim]")
    console.print(f"[dim]* p99 from fewer than {MIN_P99_SAMPLES} samples[/dim]")


def _engine_tables(result: dict[str, Any]) -> list:
    from rich.table import Table

    if "engine" not in result:
        return []
    rows = result["engine"]["rows"]
    batches = sorted({r["batch"] for r in rows})
    t = Table(title="Engine latency per call on windows after warm-up, p50 / p99 ms (— : "
                    "time budget spent)")
    for col in ("model", "engine", *(f"b{b}" for b in batches), "best windows/s",
                "b1 × first model", "b1 × first engine"):
        t.add_column(col, justify="left" if col in ("model", "engine") else "right")
    for model, eng in dict.fromkeys((r["model"], r["engine"]) for r in rows):
        cells = {r["batch"]: r for r in rows if (r["model"], r["engine"]) == (model, eng)}
        done = [r for r in cells.values() if "p50_ms" in r]
        best = max(done, key=lambda r: r["windows_per_s"], default=None)
        b1 = cells.get(batches[0], {})
        t.add_row(_ident(result, model), eng,
                  *(f"{c['p50_ms']:.2f} / {_p99(c)}" if "p50_ms" in c else "—"
                    for c in (cells.get(b, {}) for b in batches)),
                  f"{best['windows_per_s']:.0f} (b{best['batch']})" if best else "-",
                  _rel(b1.get("rel_model")), _rel(b1.get("rel_engine")))
    errors = [f"[yellow]{b['model']} / {b['engine']}: {b['error']}[/yellow]"
              for b in result["engine"]["built"] if "error" in b]
    return [t, *errors]


def _step_tables(result: dict[str, Any]) -> list:
    from rich.table import Table

    if "step" not in result:
        return []
    rows = result["step"]["rows"]
    bodies = sorted({r["bodies"] for r in rows})
    t = Table(title="Streaming step latency per call (one frame of N bodies), p50 / p99 ms; "
                    "best bodies/s")
    for col in ("model", "engine", *(f"{n} bod{'y' if n == 1 else 'ies'}" for n in bodies),
                "best bodies/s"):
        t.add_column(col, justify="left" if col in ("model", "engine") else "right")
    for model, eng in dict.fromkeys((r["model"], r["engine"]) for r in rows):
        cells = {r["bodies"]: r for r in rows if (r["model"], r["engine"]) == (model, eng)}
        done = [r for r in cells.values() if "p50_ms" in r]
        best = max(done, key=lambda r: r["bodies_per_s"], default=None)
        t.add_row(_ident(result, model), eng,
                  *(f"{c['p50_ms']:.3f} / {_p99(c)}" if "p50_ms" in c else "—"
                    for c in (cells.get(n, {}) for n in bodies)),
                  f"{best['bodies_per_s']:.0f}" if best else "-")
    windowed = result["step"].get("windowed_models") or []
    note = [f"[dim]windowed models (no step): {', '.join(windowed)}[/dim]"] if windowed else []
    return [t, *note]


def _node_tables(result: dict[str, Any]) -> list:
    out = []
    for run in (result.get("node") or {}).get("runs", []):
        out += [_node_table(result, run), _stage_table(result, run)]
    return out


def _node_table(result: dict[str, Any], run: dict[str, Any]):
    from rich.table import Table

    t = Table(title=f"Node end to end over ZeroMQ loopback, ms: {_ident(result, run['model'])} "
                    f"on {run['engine']} (budget {run['config']['budget_ms']:g} ms; max = "
                    f"closed loop, budget lifted; late = overruns + fresh frames over budget, "
                    f"each frame once)")
    for col in ("bodies", "mode", "Hz", "frames", "lost", "e2e p50", "e2e p95", "e2e p99",
                "node total p99", "late", "overruns", "over budget", "held", "drops"):
        t.add_column(col, justify="right")
    for s in run["scenarios"]:
        drops = ", ".join(f"{k} {v}" for k, v in s["dropped"].items()) or "0"
        t.add_row(str(s["bodies"]), s["mode"], f"{s['achieved_hz']:.0f}", str(s["sent"]),
                  str(s["lost"]), _ms(s["latency"], "p50_ms"), _ms(s["latency"], "p95_ms"),
                  _p99(s["latency"]), _p99(s["stages"].get("total")), _late_text(s),
                  str(s["overruns"]), str(s["over_budget"]), str(s["bodies_held"]), drops)
    return t


def _stage_table(result: dict[str, Any], run: dict[str, Any]):
    from rich.table import Table

    t = Table(title=f"Per-stage breakdown (node metrics, p50 / p99 ms): "
                    f"{_ident(result, run['model'])}")
    t.add_column("bodies", justify="right")
    t.add_column("mode", justify="right")
    for st in STAGES:
        t.add_column(st, justify="right")
    for s in run["scenarios"]:
        t.add_row(str(s["bodies"]), s["mode"],
                  *(f"{_ms(s['stages'].get(st), 'p50_ms')} / "
                    f"{_ms(s['stages'].get(st), 'p99_ms')}" for st in STAGES))
    return t


def _offline_tables(result: dict[str, Any]) -> list:
    from rich.table import Table

    if "offline" not in result:
        return []
    t = Table(title="Offline anonymize throughput (all sequences in one call)")
    for col in ("model", "engine", "frames", "seconds", "frames/s", "× first model"):
        t.add_column(col, justify="left" if col in ("model", "engine") else "right")
    for r in result["offline"]["rows"]:
        if "skipped" in r:
            t.add_row(_ident(result, r["model"]), r["engine"], "-", "-", "-",
                      f"[dim]{r['skipped']}[/dim]")
            continue
        t.add_row(_ident(result, r["model"]), r["engine"], str(r["frames"]),
                  f"{r['seconds']:.2f}", f"{r['frames_per_s']:.0f}", _rel(r.get("rel_model")))
    return [t]


def _target_tables(result: dict[str, Any]) -> list:
    from rich.table import Table

    if not result.get("targets"):
        return []
    t = Table(title="Aims (recorded, not asserted)")
    for col in ("target", "model", "engine", "measured", "met"):
        t.add_column(col)
    for r in result["targets"]:
        t.add_row(r["target"], _ident(result, r["model"]), r["engine"], r["measured"],
                  "[green]yes[/green]" if r["met"] else "[red]no[/red]")
    return [t]


# ------------------------------------------------------------------------------------------
# Plot
# ------------------------------------------------------------------------------------------

def plot(samples: dict[str, dict[str, np.ndarray]], path: str | Path) -> Path:
    """Latency histograms: node end to end (per scenario) and engine batch 1 (per model ×
    engine), written to ``path`` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, v) for k, v in (("node", "node end to end (ms)"),
                                  ("engine", "engine call, batch 1 (ms)")) if samples.get(k)]
    if not panels:
        raise ValueError("nothing to plot: no latency samples were recorded")
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 4 * len(panels)), squeeze=False)
    for ax, (key, title) in zip(axes[:, 0], panels):
        series = {k: np.asarray(v) / 1e6 for k, v in samples[key].items() if len(v)}
        hi = max(float(np.percentile(v, 99.5)) for v in series.values())
        bins = np.linspace(0, hi * 1.05 if hi > 0 else 1, 60)
        for label, v in series.items():
            ax.hist(np.clip(v, 0, bins[-1]), bins=bins, histtype="step", label=label)
        ax.set_xlabel(title)
        ax.set_ylabel("count")
        ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------------
# Saved results
# ------------------------------------------------------------------------------------------

def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=1, default=_json_default, allow_nan=False)


def save(result: dict[str, Any], results_dir: str | Path = RESULTS_DIR) -> Path:
    """Write ``<date>-<host-kind>.json`` (``-2``, ``-3`` … when taken) and refresh the
    README's summary table. Returns the JSON path."""
    d = Path(results_dir)
    d.mkdir(parents=True, exist_ok=True)
    stem = f"{result['started'][:10]}-{result['machine']['host_kind']}"
    path = d / f"{stem}.json"
    k = 2
    while path.exists():
        path = d / f"{stem}-{k}.json"
        k += 1
    path.write_text(to_json(result) + "\n")
    write_readme(d)
    return path


def _scenario(run: dict[str, Any], bodies: int, rate: bool) -> dict[str, Any] | None:
    return next((s for s in run["scenarios"]
                 if s["bodies"] == bodies and (s["mode"] != "max") == rate), None)


def summary_row(name: str, r: dict[str, Any]) -> list[str]:
    """The README's row for one saved result (its first model)."""
    m = r["machine"]
    first = r["models"][0] if r.get("models") else {"label": "-"}
    label = first["label"]
    eng = next((x for x in (r.get("engine") or {}).get("rows", [])
                if x["model"] == label and x["batch"] == 1 and "p50_ms" in x), None)
    step_rows = [x for x in (r.get("step") or {}).get("rows", [])
                 if x["model"] == label and "p99_ms" in x]
    first_engine = step_rows[0]["engine"] if step_rows else None
    steps = {x["bodies"]: x for x in step_rows if x["engine"] == first_engine}
    run = next((x for x in (r.get("node") or {}).get("runs", []) if x["model"] == label), None)
    one = _scenario(run, 1, True) if run else None
    six = _scenario(run, 6, True) if run else None
    off = [x for x in (r.get("offline") or {}).get("rows", [])
           if x["model"] == label and "frames_per_s" in x]
    best = max(off, key=lambda x: x["frames_per_s"]) if off else None
    load = m.get("load_average") or ["-"]
    return [
        f"[{r['started'][:16]}]({name})", m["host_kind"], m["cpu"][:40], str(load[0]),
        first.get("ident", label) + (" (search phases staggered)" if (r.get("options") or {})
                                     .get("stagger_search") else ""),
        f"{eng['engine']} {eng['p50_ms']:.2f} / {_p99(eng)}" if eng else "-",
        f"{first_engine} " + " / ".join(_p99(steps.get(n)) for n in (1, 6)) if steps else "-",
        f"{_p99(one['latency'])} ({one['sent']})" if one else "-",
        f"{_p99(six['latency'])} ({_late_text(six)} of {six['sent']})" if six else "-",
        f"{best['frames_per_s']:.0f} ({best['engine']})" if best else "-",
    ]


def _late_text(row: dict[str, Any]) -> str:
    """Late frames of a node scenario; for runs saved before frames were counted once, the
    range they must lie in (a held frame was counted both as an overrun and over budget)."""
    if "late" in row:
        return str(row["late"])
    lo = max(row["overruns"], row["over_budget"])
    hi = min(row["overruns"] + row["over_budget"], row["sent"])
    return str(lo) if lo == hi else f"{lo}–{hi}"


README_HEAD = """# Recorded benchmark runs

Written by `streamtmr bench --save` (one JSON per run: `<date>-<host-kind>.json`, with the machine
description — CPU, cores, memory, GPU, OS, library versions and the load average at the start
and end). Every figure in a file was measured in that one run, so models and engines compare as
ratios under the same conditions. This machine-generated table summarises the first model of
each run (the shipped default model when run without `--models`), named by its label and the
sha256 prefix of its weights (older runs: label only):

* **engine b1**: engine call latency on windows at batch 1, p50 / p99 in ms (first engine);
* **step 1 / 6 bodies p99**: streaming models, one `step` call for one frame of 1 or 6 bodies,
  ms (first engine; `-` for a windowed model);
* **1 body p99 / 6 bodies p99**: end-to-end latency over ZeroMQ loopback (sensor publish →
  anonymized receive) at 30 Hz, ms; in brackets the frames of the scenario (1 body) and the
  late frames among them (6 bodies: overruns plus fresh frames over the node's budget, each
  frame once; runs saved before 2026-12-02 did not record which frames overran, so their
  late frames are given as the range they lie in);
* **offline**: frames/s of `anonymize` on the best CPU/GPU engine;
* **load**: 1-minute load average at the start — the machine may have been shared.

`*`: a p99 from fewer than 600 samples (little more than the maximum). Aims (2-core CPU,
default model): step 1 body p99 ≤ 0.8 ms, 6 bodies ≤ 2 ms; end to end 1 body p99 ≤ 3 ms,
6 bodies @ 30 Hz p99 ≤ 5 ms with 0 late frames; offline ≥ 50,000 frames/s on CPU.

"""
TABLE_HEAD = ("| run | host | CPU | load | model | engine b1 p50 / p99 | step 1 / 6 bodies p99 "
              "| 1 body p99 (frames) | 6 bodies p99 (late of frames) | offline frames/s |\n"
              "|---|---|---|---|---|---|---|---|---|---|\n")


#: Result files of other checks, listed below the table rather than summarised in it.
OTHER_PREFIXES = ("soak-", "fuzz-", "step-", "triton-")


def write_readme(results_dir: str | Path = RESULTS_DIR) -> Path:
    """Regenerate ``README.md`` from every saved ``*.json`` in ``results_dir``."""
    d = Path(results_dir)
    rows, others = [], []
    for p in sorted(d.glob("*.json")):
        if p.name.startswith(OTHER_PREFIXES) or "gpu-parity" in p.name:
            others.append(p.name)
            continue
        try:
            r = json.loads(p.read_text())
            if not isinstance(r, dict) or "schema" not in r:  # another check's record
                others.append(p.name)
                continue
            rows.append(summary_row(p.name, r))
        except (OSError, ValueError, KeyError, TypeError) as e:
            rows.append([p.name, f"unreadable: {e}"] + ["-"] * 8)
    text = README_HEAD + TABLE_HEAD + "".join("| " + " | ".join(_cell(c) for c in row) + " |\n"
                                 for row in rows)
    others += sorted(q.name for q in d.iterdir()
                     if q.suffix in (".md", ".txt") and q.name != "README.md")
    if others:
        text += ("\nOther recorded checks (soak: `python -m bench.soak`; fuzzing: "
                 "`python -m bench.fuzz_wire`; GPU parity: `python -m bench.gpu_parity`; "
                 "the GPU session scripts: `bench/gpu_session.sh`, "
                 "`bench/gpu_session_stream.sh`):\n\n"
                 + "".join(f"* [{n}]({n})\n" for n in others))
    path = d / "README.md"
    path.write_text(text)
    return path


def _cell(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).replace("|", "\\|")

