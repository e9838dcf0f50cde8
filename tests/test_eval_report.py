"""t-SNE, report block replacement and sweep detection."""

import numpy as np

from streamtmr.eval import report, suite


def test_tsne_separates_blobs():
    from sklearn.manifold import trustworthiness

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    x = rng.normal(size=(3, 10))[labels] * 6 + rng.normal(size=(60, 10))
    y = suite.layout_2d(x, perplexity=10)
    assert y.shape == (60, 2) and np.isfinite(y).all()
    centroids = np.stack([y[labels == k].mean(0) for k in range(3)])
    within = np.mean([np.linalg.norm(y[labels == k] - centroids[k], axis=1).mean()
                      for k in range(3)])
    between = np.min([np.linalg.norm(centroids[a] - centroids[b])
                      for a in range(3) for b in range(a + 1, 3)])
    assert between > 2 * within
    assert trustworthiness(x, y, n_neighbors=5) > 0.9
    assert trustworthiness(x, rng.normal(size=(60, 2)), n_neighbors=5) < 0.7


def test_update_report_replaces_only_the_block(tmp_path):
    p = tmp_path / "r.md"
    report.update_report(p, "first")
    assert report.BEGIN in p.read_text() and "first" in p.read_text()
    p.write_text("intro\n" + p.read_text() + "outro\n")
    report.update_report(p, "second")
    text = p.read_text()
    assert "intro" in text and "outro" in text and "second" in text and "first" not in text


def _result(method, config, reid, act, ckpt=None, train_config=None):
    r = {"static": {"reid_top1": reid, "action_top1": act},
         "adaptive": {"reid_top1": reid, "action_top1": act},
         "info": {"method": method, "config": config}}
    if ckpt:
        r["info"].update(checkpoint=ckpt, train_config=train_config)
    return r


def test_sweeps_and_tradeoff_plot(tmp_path):
    res = {"chance": {"reid_top1": 0.05, "action_top1": 0.1}, "methods": {
        "original": _result("original", None, 0.9, 0.9),
        "noise σ=0.1": _result("noise", {"method": "noise", "sigma": 0.1}, 0.3, 0.5),
        "noise σ=0.02": _result("noise", {"method": "noise", "sigma": 0.02}, 0.8, 0.85),
        "p1": _result("pmr", {"method": "pmr", "d": 8}, 0.2, 0.8, "a", "loss:\n  alpha_emb: 0\n"),
        "p2": _result("pmr", {"method": "pmr", "d": 8}, 0.1, 0.7, "b", "loss:\n  alpha_emb: 10\n"),
    }}
    found = suite.sweeps(res)
    assert found[0][1] == ["original", "noise σ=0.02", "noise σ=0.1"]
    assert found[1][0] == "pmr: train.loss.alpha_emb sweep" and found[1][1] == ["p1", "p2"]
    paths = suite.plot_sweeps(res, tmp_path)
    assert len(paths) == 2 and all(p.stat().st_size > 1000 for p in paths)


def test_no_sweep_is_inferred_from_runs_that_differ_in_more_than_one_setting():
    """Two recipes whose only numeric difference is the class count also differ in a string
    setting (the target array) and in a setting the older run lacks: not a sweep."""
    def tmr(n, target, extra=""):
        return {"method": "tmr", "num_subjects": n}, f"data:\n  target_array: {target}\n{extra}"

    def res(*runs):
        ms = {"original": _result("original", None, 0.9, 0.9)}
        for i, (cfg, train) in enumerate(runs):
            ms[f"t{i}"] = _result("tmr", cfg, 0.2, 0.8, f"c{i}", train)
        return {"chance": {"reid_top1": 0.05, "action_top1": 0.1}, "methods": ms}

    assert suite.sweeps(res(tmr(40, "target"), tmr(100, "target_sync"))) == []
    assert suite.sweeps(res(tmr(40, "target_sync"),
                            tmr(100, "target_sync", "  augment_posture: 0.1\n"))) == []
    # the output folder differs between any two runs and is not a setting
    found = suite.sweeps(res(tmr(40, "target_sync", "output:\n  dir: runs/a\n"),
                             tmr(100, "target_sync", "output:\n  dir: runs/b\n")))
    assert [(t, n) for t, n, _ in found] == [("tmr: num_subjects sweep", ["t0", "t1"])]
