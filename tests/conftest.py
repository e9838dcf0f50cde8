"""Shared test helpers."""

import pytest
import torch

from streamtmr.models.registry import model_class


@pytest.fixture(autouse=True, scope="session")
def session_cache(tmp_path_factory):
    """Whatever the tests derive (exported graphs, rendered databases) lands in a cache of this
    session, never the user's."""
    patch = pytest.MonkeyPatch()
    patch.setenv("STREAMTMR_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    patch.undo()


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """Engines write exported/optimised models to a per-test cache; one torch thread."""
    monkeypatch.setenv("STREAMTMR_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)


def tiny(method: str):
    """The method's tiny preset with fixed initial weights."""
    torch.manual_seed(0)
    return model_class(method).from_preset("tiny")


@pytest.fixture(scope="session")
def model_ckpt(tmp_path_factory):
    """A copy of the shipped default weights with a privacy card bound to them (the CLI
    refuses a model without a card, and the leak guard refuses the naive retarget)."""
    import shutil

    from engines.card import write_card
    from streamtmr.models.checkpoint import default_checkpoint_path
    d = tmp_path_factory.mktemp("carded")
    shutil.copyfile(default_checkpoint_path(), d / "model.safetensors")
    write_card(d / "model.safetensors", {"command": "a test card"})
    return d / "model.safetensors"


def utk_folder(root, rng, subjects=(1, 2)):
    """A UTKinect-Action3D folder: each subject two runs, each run two labelled actions of 14
    frames (walk, throw), every person with their own random pose plus 1 cm noise per frame."""
    labels = []
    for s in subjects:
        for e in (1, 2):
            base = rng.uniform(-0.5, 0.5, 60) * s
            rows = [f"{i}  " + "  ".join(f"{v:.5f}" for v in base + rng.normal(0, 0.01, 60))
                    for i in range(1, 31)]
            (root / f"joints_s{s:02d}_e{e:02d}.txt").write_text("\n".join(rows) + "\n")
            labels += [f"s{s:02d}_e{e:02d}", "walk: 1 14", "throw: 16 29"]
    (root / "actionLabel.txt").write_text("\n".join(labels) + "\n")
    return root
