"""What a benchmark ran on: CPU, cores, memory, GPU, OS, library versions, the load, and the
streamtmr code itself (its version and git commit).

Recorded with every result, because a figure means nothing without its machine — and on a
shared machine nothing without the load average at the time.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

#: Distributions whose versions are recorded (``None`` when not installed).
LIBRARIES = ("torch", "onnxruntime", "onnxruntime-gpu", "numpy", "pyzmq", "msgpack", "tensorrt",
             "onnx")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    text = _read("/proc/cpuinfo") or ""
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    if m:
        return m.group(1).strip()
    return platform.processor() or platform.machine() or "unknown"


#: Vector extensions, which decide the kernels ONNX Runtime and torch run. Two 2-core hosts that
#: both call themselves "AMD EPYC" measured the same model's step through the same code 5x apart
#: (docs/results.md, "A slower host"), and the name alone cannot tell them apart.
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
              "avx512_bf16", "amx_tile", "asimd", "sve")


def cpu_simd(cpuinfo: str | None = None) -> list[str] | None:
    """Which of :data:`SIMD_FLAGS` the CPU has (the ``flags`` / ``Features`` line of
    ``/proc/cpuinfo``, or the text given); None where that file is absent."""
    text = _read("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    if not text:
        return None
    m = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", text, re.MULTILINE)
    have = set(m.group(1).split()) if m else set()
    return [f for f in SIMD_FLAGS if f in have]


def memory_gib() -> float | None:
    text = _read("/proc/meminfo") or ""
    m = re.search(r"^MemTotal:\s*(\d+)\s*kB", text, re.MULTILINE)
    return round(int(m.group(1)) / 2**20, 1) if m else None


def cpu_quota() -> float | None:
    """CPUs allowed by the cgroup v2 quota (``cpu.max``), None when unlimited or unknown."""
    text = _read("/sys/fs/cgroup/cpu.max")
    if not text:
        return None
    quota, _, period = text.strip().partition(" ")
    if quota == "max" or not period:
        return None
    try:
        return round(int(quota) / int(period), 2)
    except ValueError:
        return None


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    try:
        import zmq
        out["libzmq"] = zmq.zmq_version()
    except ImportError:
        out["libzmq"] = None
    return out


def code_revision(root: str | Path | None = None) -> dict[str, Any]:
    """The streamtmr code that ran: its installed version and, from a git checkout (``root``,
    default: the one streamtmr is imported from), the commit and whether tracked files differ
    from it (``None`` where git cannot tell). Two runs of the same model file through different
    code (a faster search, say) are told apart by this."""
    import streamtmr

    root = Path(root) if root else Path(streamtmr.__file__).resolve().parents[1]
    out: dict[str, Any] = {"version": getattr(streamtmr, "__version__", None), "commit": None,
                           "dirty": None}

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        out["commit"] = git("rev-parse", "HEAD")
        out["dirty"] = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def gpus() -> list[dict[str, Any]]:
    """Every GPU torch or ``nvidia-smi`` sees: name, memory (GiB), driver/CUDA when known."""
    found: list[dict[str, Any]] = []
    try:
        import torch
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                found.append({"index": i, "name": p.name,
                              "memory_gib": round(p.total_memory / 2**30, 1),
                              "cuda": torch.version.cuda, "source": "torch"})
    except Exception:  # a broken CUDA install must not stop the machine description
        pass
    if not found and shutil.which("nvidia-smi"):
        try:
            text = subprocess.run(
                ["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version",
                 "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10,
                check=True).stdout
        except (OSError, subprocess.SubprocessError):
            text = ""
        for line in text.strip().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 4:
                mem = float(parts[2]) / 1024 if parts[2].replace(".", "").isdigit() else None
                found.append({"index": int(parts[0]) if parts[0].isdigit() else parts[0],
                              "name": parts[1], "memory_gib": mem and round(mem, 1),
                              "driver": parts[3], "source": "nvidia-smi"})
    return found


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def host_kind(machine: dict[str, Any]) -> str:
    """A short file-name-safe kind of machine, e.g. ``cpu-2c`` or ``nvidia-h100-80gb-hbm3-16c``."""
    cores = machine.get("cores_available") or machine.get("cores_logical") or 0
    gpu = machine.get("gpus") or []
    head = _slug(gpu[0]["name"]) if gpu else "cpu"
    return f"{head}-{cores}c"


def describe_machine() -> dict[str, Any]:
    """Everything above as one JSON-ready dict (keys documented in bench/results/README.md)."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:
        available = os.cpu_count()
    try:
        import torch
        torch_threads = torch.get_num_threads()
    except ImportError:
        torch_threads = None
    machine: dict[str, Any] = {
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "cpu_simd": cpu_simd(),
        "cores_logical": os.cpu_count(),
        "cores_available": available,
        "cpu_quota": cpu_quota(),
        "memory_gib": memory_gib(),
        "gpus": gpus(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "torch_threads": torch_threads,
        "load_average": load_average(),
        "streamtmr": code_revision(),
    }
    machine["host_kind"] = host_kind(machine)
    return machine


def write_record(record: dict[str, Any], out: str | Path | None, prefix: str) -> Path:
    """Write a bench record as JSON to ``out``, or by default to
    ``bench/results/<prefix>-<date>-<host kind>.json``; returns the path."""
    import json

    path = Path(out) if out else Path("bench/results") / (
        f"{prefix}-{record['date'][:10]}-{host_kind(record['machine'])}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path
