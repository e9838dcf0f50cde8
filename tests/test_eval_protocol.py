"""The protocol keeps anonymizer-train subjects out of evaluation and splits attackers by
camera and repetition; anonymizers see only their own window length."""

import json

import numpy as np
import pytest
import torch

from streamtmr.data.store import SkeletonStore, StoreWriter
from streamtmr.data.synth import generate
from streamtmr.eval import protocol, suite
from streamtmr.models.baselines import NaiveRetarget
from streamtmr.models.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "s"
    generate(root, n_subjects=6, n_actions=2, reps=2, seed=0, progress=False)
    return SkeletonStore(root)


def test_splits_keep_anonymizer_train_subjects_out(store):
    cfg = protocol.EvalConfig(window=16, train_stride=16, gap_sequences=1)
    data = protocol.load_store(store, cfg)
    ev = set(store.meta["splits"]["eval"])
    anon = set(store.meta["splits"]["anonymizer_train"])
    assert ev and anon and not ev & anon
    for part in (data.train, data.test):
        assert set(np.unique(part["subject"]).tolist()) == ev
        assert not set(np.unique(part["subject"]).tolist()) & anon
    assert (data.test["view"] == 0).all() and (data.test["rep"] == 0).all()
    assert (data.train["view"] != 0).all() and (data.train["rep"] != 0).all()
    # no performance is in both: (subject, action, rep) of test never appears in train
    key = lambda d: set(zip(d["subject"].tolist(), d["action"].tolist(), d["rep"].tolist()))  # noqa: E731
    assert not key(data.train) & key(data.test)
    chance = data.chance()
    assert chance["reid_top1"] == pytest.approx(1 / len(ev))
    assert chance["action_top1"] == pytest.approx(0.5) and chance["linkage_auc"] == 0.5
    view_only = protocol.load_store(store, protocol.EvalConfig(window=16, split="view"))
    assert set(view_only.test["rep"].tolist()) == {0, 1}


def test_overlapping_or_missing_splits_are_refused(tmp_path):
    for splits, msg in (({"anonymizer_train": [0, 1], "eval": [1, 2]}, "both"),
                        (None, "no splits.eval")):
        root = tmp_path / msg.replace(" ", "_")
        meta = {"name": "t"} if splits is None else {"name": "t", "splits": splits}
        with StoreWriter(root, {"joints": (25, 3)}, meta=meta) as w:
            w.append({"joints": np.zeros((4, 25, 3))}, subject=1, action=0, view=0, rep=0)
        with pytest.raises(protocol.ProtocolError, match=msg):
            protocol.load_store(root)


def test_checkpoint_trained_on_eval_subjects_is_refused(store, tmp_path):
    ev = store.meta["splits"]["eval"]
    path = save_checkpoint(tmp_path / "m.safetensors", NaiveRetarget({"method": "naive"}),
                           extra={"data": {"store": str(store.root), "train_subjects": ev[:1]}})
    cand = suite.Candidate("bad", checkpoint=path)
    with pytest.raises(protocol.ProtocolError, match="evaluation subjects"):
        suite.build(cand, protocol.store_dummy(store), str(store.root), ev)
    ok = save_checkpoint(tmp_path / "ok.safetensors", NaiveRetarget({"method": "naive"}),
                         extra={"data": {"store": str(store.root),
                                         "train_subjects": store.meta["splits"]
                                         ["anonymizer_train"]}})
    m = suite.build(suite.Candidate("ok", checkpoint=ok), protocol.store_dummy(store),
                    str(store.root), ev)
    assert m.window is None and m.info["method"] == "naive"


class _FixedWindow(torch.nn.Module):
    """Accepts exactly ``window`` frames (like learned models) and adds 1."""

    def __init__(self, window):
        super().__init__()
        self.window = window
        self.seen = []

    def forward(self, x):
        assert x.shape[1] == self.window, x.shape
        self.seen.append(x.shape[1])
        return x + 1


def test_anonymizer_sees_only_its_window():
    x = np.random.default_rng(0).normal(size=(3, 20, 25, 3)).astype(np.float32)
    mod = _FixedWindow(8)
    y = protocol.make_anonymizer(mod, 8, batch=2)(x)
    assert np.allclose(y, x + 1) and set(mod.seen) == {8}
    short = protocol.make_anonymizer(mod, 8)(x[:, :5])  # padded to 8, cut back to 5
    assert short.shape == (3, 5, 25, 3) and np.allclose(short, x[:, :5] + 1)
    assert np.array_equal(protocol.make_anonymizer(None)(x), x)
    newest = protocol.streamed_newest(protocol.make_anonymizer(mod, 8), x[0], 8)
    assert np.allclose(newest, x[0] + 1)


def test_model_list_and_runs_discovery(tmp_path):
    save_checkpoint(tmp_path / "runs" / "a" / "model.safetensors",
                    NaiveRetarget({"method": "naive"}))
    (tmp_path / "runs" / "b").mkdir()
    (tmp_path / "runs" / "b" / "model.safetensors").write_bytes(b"not a checkpoint")
    found = suite.find_checkpoints(tmp_path / "runs")
    assert [c.name for c in found] == ["a"]
    lst = tmp_path / "models.yaml"
    lst.write_text(json.dumps([{"name": "A", "checkpoint": "runs/a/model.safetensors"}]))
    assert suite.read_model_list(lst)[0].checkpoint == tmp_path / "runs/a/model.safetensors"
    lst.write_text("- {name: A}\n")
    with pytest.raises(protocol.ProtocolError, match="entry 1"):
        suite.read_model_list(lst)


def test_same_population_is_recognised_across_folders(store, tmp_path):
    twin = tmp_path / "twin"
    generate(twin, n_subjects=6, n_actions=2, reps=2, seed=0, progress=False)
    ev = store.meta["splits"]["eval"]
    path = save_checkpoint(tmp_path / "m.safetensors", NaiveRetarget({"method": "naive"}),
                           extra={"data": {"store": str(twin), "train_subjects": ev}})
    with pytest.raises(protocol.ProtocolError, match="evaluation subjects"):
        suite.build(suite.Candidate("twin", checkpoint=path), protocol.store_dummy(store),
                    str(store.root), ev)


def test_oracles_read_the_ground_truth_and_are_attacked_adaptively(store):
    """The ground-truth rows: their output is the store's target arrays (MPJPE 0 to their own
    array), they get retrained (adaptive) attackers like any anonymizer, and every method
    reports MPJPE to the frame-aligned target_sync."""
    from streamtmr.eval import suite
    from streamtmr.eval.attackers import AttackerTraining

    cfg = protocol.EvalConfig(window=16, train_stride=16, gap_sequences=1, linkage_pairs=40,
                              attacker=AttackerTraining(width=8, epochs=1))
    data = protocol.load_store(store, cfg)
    assert {"target", "target_sync"} <= set(data.test)
    cands = suite.oracle_candidates(data.test)
    assert [c.name for c in cands] == ["ground truth (neutral tempo)", "ground truth (own tempo)"]
    methods = [suite.build(c, data.dummy) for c in cands]
    res = protocol.run_protocol(data, methods, cfg)["methods"]
    neutral, own = res["ground truth (neutral tempo)"], res["ground truth (own tempo)"]
    assert neutral["quality"]["mpjpe_target_mm"] == pytest.approx(0.0, abs=1e-6)
    assert own["quality"]["mpjpe_sync_mm"] == pytest.approx(0.0, abs=1e-6)
    assert own["quality"]["pose_mpjpe_sync_mm"] == pytest.approx(0.0, abs=1e-6)
    assert own["quality"]["mpjpe_target_mm"] > 1.0 and "stream_gap_mm" not in own["quality"]
    q = res["original"]["quality"]
    assert q["mpjpe_sync_mm"] > q["pose_mpjpe_sync_mm"] > 1.0
    assert own["adaptive"] is not own["static"] and "linkage" in own["adaptive"]


def test_cached_entries_from_before_the_pose_metric_are_upgraded_without_attackers(
        store, monkeypatch):
    """A cached result lacking the own-tempo metrics gets them from the method's output alone:
    no attacker is trained, the entry is rewritten, the other numbers are kept."""
    cfg = protocol.EvalConfig(window=16, train_stride=16, gap_sequences=1)
    data = protocol.load_store(store, cfg)
    naive = protocol.method_from_model("naive", NaiveRetarget(), data.dummy)
    old = {"static": {"action_top1": 0.5, "reid_top1": 0.9},
           "adaptive": {"reid_top1": 0.9, "linkage": {"auc": 0.9}},
           "quality": {"mpjpe_source_mm": 12.0, "mpjpe_sync_mm": 99.0}}

    class DictCache:
        def __init__(self):
            self.d = {"original": json.loads(json.dumps(old)), "naive": json.loads(
                json.dumps(old))}

        def get(self, m):
            return self.d.get(m.name)

        def put(self, m, result):
            self.d[m.name] = result

    def no_training(*a, **k):
        raise AssertionError("attackers trained for a cached method")

    monkeypatch.setattr(protocol, "train_attackers", no_training)
    cache = DictCache()
    res = protocol.run_protocol(data, [naive], cfg, cache)["methods"]
    expect = protocol.sync_quality(data, protocol._output(naive, data, cfg))
    for name in ("original", "naive"):
        q = res[name]["quality"]
        assert q["mpjpe_source_mm"] == 12.0  # kept
        assert q == cache.d[name]["quality"]  # rewritten
    assert res["naive"]["quality"]["pose_mpjpe_sync_mm"] == pytest.approx(
        expect["pose_mpjpe_sync_mm"])
    assert res["naive"]["quality"]["mpjpe_sync_mm"] == pytest.approx(expect["mpjpe_sync_mm"])
    assert 1.0 < expect["pose_mpjpe_sync_mm"] < expect["mpjpe_sync_mm"]
