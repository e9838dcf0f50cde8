"""``streamtmr data``: synth, info, ntu/utkinect conversion front ends and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamtmr.cli import main
from streamtmr.data.store import SkeletonStore

REAL = Path(__file__).resolve().parents[2] / "shared/data/real"


@pytest.fixture(scope="module")
def synth_store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "synth"
    rc = main(["data", "synth", "--out", str(out), "--subjects", "3", "--actions", "2",
               "--reps", "1", "--views", "0", "45", "--seed", "4", "--no-progress"])
    assert rc == 0
    return out


def test_synth_writes_a_store(synth_store):
    store = SkeletonStore(synth_store)
    assert len(store) == 3 * 2 * 2 * 1
    assert store.meta["views_deg"] == [0.0, 45.0]
    assert store.meta["info"]["seed"] == 4


def test_info_describes_the_store(synth_store, capsys):
    assert main(["data", "info", str(synth_store)]) == 0
    out = capsys.readouterr().out
    for word in ("sequences", "frames", "subjects", "actions", "views", "anonymizer_train",
                 "eval", "joints", "target", "dummy"):
        assert word in out
    assert "wave" in out and "clap" in out


def test_synth_refuses_an_existing_store(synth_store, capsys):
    rc = main(["data", "synth", "--out", str(synth_store), "--subjects", "2", "--actions", "1",
               "--reps", "1", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(synth_store) in err and "--overwrite" in err


def test_synth_overwrite(tmp_path):
    out = tmp_path / "s"
    args = ["data", "synth", "--out", str(out), "--subjects", "2", "--actions", "1", "--reps",
            "1", "--views", "0", "--no-progress"]
    assert main(args) == 0
    assert main(args + ["--overwrite", "--seed", "1"]) == 0
    assert SkeletonStore(out).meta["info"]["seed"] == 1


@pytest.mark.parametrize("argv", [
    ["data", "synth", "--subjects", "1"],
    ["data", "synth", "--actions", "999"],
    ["data", "synth", "--reps", "0"],
])
def test_synth_bad_sizes(tmp_path, capsys, argv):
    assert main(argv + ["--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "must be" in capsys.readouterr().err


def test_info_bad_paths(tmp_path, capsys):
    missing = tmp_path / "missing"
    assert main(["data", "info", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["data", "info", str(empty)]) == 2
    err = capsys.readouterr().err
    assert str(empty) in err and "store" in err


@pytest.mark.parametrize("kind", ["ntu", "utkinect"])
def test_convert_missing_source(tmp_path, capsys, kind):
    src = tmp_path / "nowhere"
    assert main(["data", kind, str(src), "--out", str(tmp_path / "o")]) == 2
    assert str(src) in capsys.readouterr().err


def test_ntu_folder_without_skeletons(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    assert main(["data", "ntu", str(src), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert str(src) in capsys.readouterr().err


@pytest.mark.skipif(not (REAL / "utkinect").is_dir(), reason=f"{REAL / 'utkinect'} not present")
def test_utkinect_conversion_and_info(tmp_path, capsys):
    out = tmp_path / "utk"
    assert main(["data", "utkinect", str(REAL / "utkinect"), "--out", str(out)]) == 0
    assert len(SkeletonStore(out)) > 0
    capsys.readouterr()
    assert main(["data", "info", str(out)]) == 0
    assert "sequences" in capsys.readouterr().out
