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
