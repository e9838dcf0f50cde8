"""Shared test helpers."""

import numpy as np
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


@pytest.fixture(scope="session")
def matcher_store(tmp_path_factory):
    """A small SynthKinect store for the motion-matching tests: 6 people, 3 actions, two
    cameras, one repetition."""
    from streamtmr.data.store import SkeletonStore
    from streamtmr.data.synth import generate

    torch.set_num_threads(1)
    root = generate(tmp_path_factory.mktemp("mm") / "synth", n_subjects=6, n_actions=3,
                    views=(0, 45), reps=1, seed=3, progress=False)
    return SkeletonStore(root)


@pytest.fixture(scope="session")
def matcher_source(matcher_store) -> torch.Tensor:
    """Two observed (sensor-noise) sequences of ``matcher_store``'s evaluation people, camera
    2, cut to equal length: ``[2, T, 25, 3]``."""
    store = matcher_store
    ev = set(store.meta["splits"]["eval"])
    rows = [i for i, r in enumerate(store.rows) if r["subject"] in ev and r["view"] == 1][:2]
    seqs = [np.array(store[i].joints) for i in rows]
    T = min(len(s) for s in seqs)
    return torch.as_tensor(np.stack([s[:T] for s in seqs]))


def onnx_steps(model, x: torch.Tensor) -> np.ndarray:
    """Step ``x [B, T, 25, 3]`` frame by frame on ONNX Runtime: outputs ``[B, T, 25, 3]``."""
    from engines import create_engine

    engine = create_engine("onnxruntime", model=model, window=None)
    state = engine.init_state(x.shape[0])
    outs = []
    for t in range(x.shape[1]):
        y, state = engine.step(x[:, t].numpy(), state)
        outs.append(y)
    return np.stack(outs, 1)


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
