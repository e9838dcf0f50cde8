"""The rooms stay independent: who may import whom (see ../shared/DESIGN.md)."""

import subprocess
import sys

import pytest


def _loaded(module: str) -> set[str]:
    code = (f"import sys, {module}; "
            "print('\\n'.join(m for m in sys.modules if m.split('.')[0] in "
            "('streamtmr', 'engines', 'sensors', 'bench')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("module", ["streamtmr.stream.node", "streamtmr.stream.api", "engines",
                                    "sensors.synthetic", "sensors.replay", "sensors.kinect"])
def test_hot_path_never_imports_training_evaluation_or_losses(module):
    loaded = _loaded(module)
    assert not {m for m in loaded
                if m.startswith(("streamtmr.train", "streamtmr.eval", "streamtmr.losses"))}


def test_skeleton_imports_nothing_of_the_project():
    assert _loaded("streamtmr.skeleton") == {"streamtmr", "streamtmr.skeleton"}


def test_data_knows_no_model_and_models_know_no_runtime():
    data = _loaded("streamtmr.data.synth") | _loaded("streamtmr.data.datasets")
    assert not {m for m in data if m.startswith(("streamtmr.models", "engines"))}
    models = _loaded("streamtmr.models.tmr") | _loaded("streamtmr.models.pmr")
    assert not {m for m in models
                if m.startswith(("engines", "streamtmr.stream", "sensors", "streamtmr.train"))}


def test_models_know_no_training_objective():
    """Losses are a training matter: no model module imports them, and losses import no model."""
    import importlib

    models = _loaded("streamtmr.models.registry; streamtmr.models.registry.available()")
    assert "streamtmr.models.tmr" in models  # every model module was imported
    assert not {m for m in models if m.startswith(("streamtmr.losses", "streamtmr.train"))}
    assert not {m for m in _loaded("streamtmr.losses") if m.startswith("streamtmr.models")}
    tmr = importlib.import_module("streamtmr.models.tmr")
    assert not hasattr(tmr, "STAGE_WEIGHTS")
    assert not hasattr(tmr.DisentangledTMR, "training_losses")
