"""A new anonymizer is its module and its config: registered, trained, exported, evaluated.

The toy method below lives in a temporary folder outside the package (as a plugin would) and
touches no project file: its module declares the registry entry (class, presets, traits, the
generic retargeting curriculum as its trainer) and a YAML config says how to train it.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from streamtmr.data import synth
from streamtmr.models import registry

TOY_MODULE = '''
import torch
from torch import nn

from streamtmr import skeleton
from streamtmr.models.base import Anonymizer
from streamtmr.models.registry import register


@register
class ToyRetarget(Anonymizer):
    """Bone directions nudged by a small MLP, then the target's bones (exact lengths)."""

    method = "toy"
    presets = {"tiny": {"window": 16, "hidden": 8}}
    traits = frozenset({"learned", "windowed"})
    trainer = "streamtmr.train.retarget:RetargetCurriculum"

    def __init__(self, config=None):
        super().__init__({"method": "toy", "window": 16, "hidden": 8, **(config or {})})
        h = int(self.config["hidden"])
        self.net = nn.Sequential(nn.Linear(75, h), nn.Tanh(), nn.Linear(h, 75))

    def retarget(self, source, target_lengths):
        b, t = source.shape[:2]
        dirs = skeleton.bone_directions(source)
        dirs = dirs + self.net(dirs.reshape(b, t, 75)).reshape(b, t, 25, 3)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        lengths = target_lengths.expand(b, 25)
        return skeleton.forward_kinematics(source[..., skeleton.ROOT, :], dirs,
                                           lengths[:, None, :])
'''

TOY_CONFIG = '''
model: {method: toy, preset: tiny}
data: {window: 16, max_val_windows: 4}
train:
  batch_size: 4
  lr: 1.0e-2
  seed: 0
  log_every: 1
  val_every: 4
  ckpt_every: 4
  num_workers: 0
  device: cpu
  progress: false
  stages:
    - {name: retarget, iterations: 4}
'''


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return synth.generate(tmp_path_factory.mktemp("synth") / "toy", n_subjects=6, n_actions=2,
                          views=(0, 1), reps=2, seed=0, progress=False)


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy's two files; the registry and sys.modules are restored afterwards."""
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "toy_anonymizer.py").write_text(textwrap.dedent(TOY_MODULE))
    (tmp_path / "toy.yaml").write_text(TOY_CONFIG)
    monkeypatch.syspath_prepend(str(plugin))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    importlib.import_module("toy_anonymizer")
    yield tmp_path / "toy.yaml"
    sys.modules.pop("toy_anonymizer", None)


def test_unknown_or_misspelled_methods_fail_loudly():
    with pytest.raises(KeyError, match=r"unknown method 'tmrr'; did you mean 'tmr'\?.*'naive'"):
        registry.entry("tmrr")
    with pytest.raises(KeyError, match="unknown trait"):
        registry.available("fast")
    assert "noise" in registry.available("stochastic")
    assert "tmr" in registry.available("learned") and "naive" not in registry.available("learned")


def test_an_entry_is_checked_when_it_registers(monkeypatch):
    from streamtmr.models.base import Anonymizer
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    class Odd(Anonymizer):
        method = "odd"
        traits = frozenset({"windowed", "quantum"})

    with pytest.raises(ValueError, match="unknown trait.*quantum"):
        registry.register(Odd)
    Odd.traits, Odd.trainer = frozenset({"windowed"}), "no colon"
    with pytest.raises(ValueError, match="module:Class"):
        registry.register(Odd)

    class Naive2(Anonymizer):
        method = "naive"

    with pytest.raises(ValueError, match="registered twice"):
        registry.register(Naive2)


def test_a_toy_method_is_trained_exported_and_evaluated(toy, store, tmp_path, isolated_cache):
    from engines import resolve_source
    from engines.onnx_export import example_input, export_onnx, max_abs_error
    from streamtmr.eval.runner import EvalRequest, run_evaluation
    from streamtmr.models.checkpoint import load_checkpoint
    from streamtmr.train import load_config, train

    assert "toy" in registry.available("learned")
    ckpt = train(load_config(toy), store, tmp_path / "run")
    model = load_checkpoint(ckpt)
    assert model.method == "toy"
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"stage": "retarget"' in metrics and '"val_mpjpe_mm"' in metrics

    source = resolve_source(ckpt, window=16)
    onnx = export_onnx(source, tmp_path / "toy.onnx")
    assert max_abs_error(source, onnx, example_input(source, 3)) < 1e-4

    results = run_evaluation(EvalRequest(data=store, method="toy", checkpoint=ckpt,
                                         window=16, epochs=1, width=8, no_cache=True,
                                         runs=None, out=tmp_path / "eval"), log=lambda s: None)
    toy_result = results["methods"]["toy"]
    assert toy_result["info"]["method"] == "toy"
    # what the evaluation ran keeps the dummy's bone lengths (the model builds on them)
    assert toy_result["quality"]["bone_var_mm2"] < 1e-3
    assert 0.0 <= toy_result["adaptive"]["reid_top1"] <= 1.0
    assert (tmp_path / "eval" / "results.json").is_file()


def test_a_module_run_as_main_and_imported_by_name_registers_once(monkeypatch):
    """``python -m streamtmr.models.motion_match`` defines its class in ``__main__``; the
    registry importing the module by name then finds the same class from the same file, not a
    second method (``tests/test_action_prior.py`` runs the command itself). A class of the
    same name from another file is still refused."""
    import sys
    import types

    import streamtmr.models.motion_match as mm

    registry.model_class("motion_match")      # every in-package method registered
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    main = types.ModuleType("__main__")
    main.__file__ = mm.__file__
    monkeypatch.setitem(sys.modules, "__main__", main)
    as_main = type("MotionMatching", (mm.MotionMatching,),
                   {"__module__": "__main__", "__qualname__": "MotionMatching"})
    registry.register(as_main)
    assert registry.model_class("motion_match") is as_main
    registry.register(mm.MotionMatching)
    assert registry.model_class("motion_match") is mm.MotionMatching
    main.__file__ = __file__                   # the same name, another file
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(as_main)
