"""Shared test helpers."""

import pytest
import torch

from streamtmr.models.registry import model_class


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
