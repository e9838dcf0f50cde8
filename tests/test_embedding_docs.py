"""docs/embedding.md: every Python example runs as copied (each in a fresh interpreter from
the repository root; the subscriber example against a running ``streamtmr run``)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "embedding.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def _run(code: str, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_the_doc_has_three_examples():
    assert len(EXAMPLES) == 3


@pytest.mark.slow
@pytest.mark.parametrize("k", [0, 1])
def test_in_process_examples_run(k):
    r = _run(EXAMPLES[k])
    assert r.returncode == 0, r.stderr[-2000:]
    expect = "avatars posed" if k == 0 else "published"
    assert expect in r.stdout


@pytest.mark.slow
def test_subscriber_example_against_a_running_node():
    cmd = re.search(r"Run `(streamtmr run [^`]+)`", DOC.read_text()).group(1).split()
    node = subprocess.Popen([shutil.which("streamtmr") or "streamtmr", *cmd[1:], "--duration",
                             "60"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        r = _run(EXAMPLES[2])
    finally:
        node.terminate()
        out = node.communicate(timeout=30)[0]
    assert r.returncode == 0, r.stderr[-1000:] + out[-1000:]
    assert len(r.stdout.splitlines()) >= 30
