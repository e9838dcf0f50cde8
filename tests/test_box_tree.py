"""The box tree finds exactly the frame brute force finds (the 1e-3 grid, the first index on
ties, tie jitter), in PyTorch and through ONNX Runtime, for any number of bodies; motion
matching with the tree publishes what it published by brute force."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from streamtmr.models import box_tree
from streamtmr.models.checkpoint import load_checkpoint, save_checkpoint
from streamtmr.models.motion_match import MotionMatching, build_database
from streamtmr.models.registry import build_model

SCALE = 1e3
UTKINECT = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "utkinect"


def brute(q, features, landing, jitter=0.0, t=None):
    """The reference: every frame's score on the grid, argmin = the first index on ties."""
    score = torch.addmm(landing[None], q, features.T, alpha=-2.0)
    score = torch.round(score * SCALE) / SCALE
    key = score
    if jitter > 0:
        key = score + box_tree.tie_noise(torch.arange(len(features))[None], t[:, None], jitter)
    best = key.argmin(1)
    return best, score.gather(1, best[:, None]).squeeze(1)


def motion_like(n=6000, d=12, seed=0):
    """Features with the structure of a motion database: smooth clips (consecutive frames
    nearly equal), held poses (exact repeats, so ties on the grid), some frames not
    searchable (+inf landing)."""
    g = torch.Generator().manual_seed(seed)
    steps = torch.randn(n, d, generator=g) * 0.05
    steps[torch.rand(n, generator=g) < 0.2] = 0.0                           # holds
    walk = steps.cumsum(0)
    start = torch.rand(n, generator=g) < 0.02                               # clip starts
    start[0] = True
    clip = start.cumsum(0) - 1
    first = start.nonzero().squeeze(1)
    # each clip: a random start pose, then small steps (standardised scale, as the database)
    features = torch.randn(len(first), d, generator=g)[clip] + walk - walk[first][clip]
    landing = (features**2).sum(1)
    landing[torch.rand(n, generator=g) < 0.1] = torch.inf
    return features, landing


def queries(features, b=300, seed=1):
    g = torch.Generator().manual_seed(seed)
    near = features[torch.randint(len(features), (b // 2,), generator=g)]
    near = near + 0.03 * torch.randn(near.shape, generator=g)
    exact = features[torch.randint(len(features), (b // 4,), generator=g)]   # on a frame
    far = 5.0 * torch.randn(b - len(near) - len(exact), features.shape[1], generator=g)
    return torch.cat([near, exact, far])


def search(q, tree, jitter=0.0, t=None):
    return box_tree.nearest(q, tree, SCALE, jitter, t)


@pytest.mark.parametrize("leaf", [1, 7, 24])
def test_nearest_is_the_brute_force_frame(leaf):
    features, landing = motion_like()
    tree = box_tree.build(features, landing, leaf=leaf)
    q = queries(features)
    for b in (1, 5):  # bodies searched together
        for i in range(0, len(q), b):
            frame, score = search(q[i : i + b], tree)
            ref, ref_score = brute(q[i : i + b], features, landing)
            assert torch.equal(frame, ref), i
            # the same cost; its float sum may run in another order (bmm against addmm)
            torch.testing.assert_close(score, ref_score, rtol=1e-6, atol=1e-3)
    assert torch.isfinite(landing[search(q, tree)[0][:50]]).all()   # never a non-landing frame


def test_ties_take_the_first_frame_and_jitter_matches_brute_force():
    features, landing = motion_like(seed=2)
    features = torch.round(features * 4) / 4           # coarse values: many exact ties
    landing = torch.where(torch.isfinite(landing), (features**2).sum(1), landing)
    tree = box_tree.build(features, landing, leaf=16)
    q = queries(features, seed=3)
    t = torch.randint(0, 1000, (len(q),))
    tied = 0
    for i in range(0, len(q), 3):
        frame, _ = search(q[i : i + 3], tree)
        ref, ref_score = brute(q[i : i + 3], features, landing)
        assert torch.equal(frame, ref)
        score = torch.round(torch.addmm(landing[None], q[i : i + 3], features.T, alpha=-2.0)
                            * SCALE) / SCALE
        tied += int(((score == ref_score[:, None]).sum(1) > 1).sum())
        frame, score = search(q[i : i + 3], tree, 2.0, t[i : i + 3])
        ref, ref_score = brute(q[i : i + 3], features, landing, 2.0, t[i : i + 3])
        assert torch.equal(frame, ref)
        torch.testing.assert_close(score, ref_score, rtol=1e-6, atol=1e-3)
    assert tied > 20   # the ties were there to be broken


def test_no_body_and_a_non_finite_query():
    features, landing = motion_like(n=500)
    tree = box_tree.build(features, landing, leaf=8)
    frame, score = search(features[:0], tree)
    assert frame.shape == (0,) and score.shape == (0,)
    q = torch.stack([features[3], torch.full_like(features[0], torch.nan)])
    frame, score = search(q, tree)
    assert frame[0] == brute(q[:1], features, landing)[0][0]
    assert frame[1] == 0 and score[1] >= box_tree.NO_FRAME   # no candidate: frame 0, no jump


@pytest.mark.parametrize("leaf", [-1, 2.5, "24", True])
def test_a_bad_search_leaf_is_refused_by_name(leaf):
    with pytest.raises(ValueError, match="search_leaf must be an integer >= 0"):
        MotionMatching({**MotionMatching.presets["tiny"], "search_leaf": leaf})


def test_build_refuses_what_it_cannot_index():
    features, landing = motion_like(n=100)
    with pytest.raises(ValueError, match="leaf must be >= 1"):
        box_tree.build(features, landing, leaf=0)
    with pytest.raises(ValueError, match="no searchable frame"):
        box_tree.build(features, torch.full_like(landing, torch.inf))


def test_the_tree_reads_a_small_share_of_a_motion_database():
    """The point of the tree: on clip-structured data a query's candidate leaves hold a few
    percent of the frames (brute force: all of them)."""
    features, landing = motion_like(n=40000, d=24, seed=4)
    tree = box_tree.build(features, landing)
    q = queries(features, b=100, seed=5)[:50]          # queries near the database
    share = [box_tree.candidates(q[i : i + 1], tree, 2e-3)[1].numel() / len(features)
             for i in range(len(q))]
    assert np.median(share) < 0.15


def test_every_member_lies_in_its_leaf_sphere_and_box():
    """The two lower bounds hold by construction: each leaf's frames lie within its radius of
    its representative and inside its box (padding excepted)."""
    features, landing = motion_like(n=3000, seed=6)
    tree = box_tree.build(features, landing, leaf=10)
    k, d = tree["leaf_lo"].shape
    feat = tree["leaf_feat"].reshape(k, -1, d)
    real = torch.isfinite(tree["leaf_score"])
    reach = ((feat - tree["rep_feat"][:, None]) ** 2).sum(2).sqrt()
    assert (reach[real] <= tree["leaf_radius"][:, None].expand_as(reach)[real]).all()
    assert ((feat >= tree["leaf_lo"][:, None]) & (feat <= tree["leaf_hi"][:, None]))[real].all()
    assert torch.equal(torch.sort(tree["leaf_frame"][real]).values,
                       torch.isfinite(landing).nonzero().squeeze(1))   # each frame once


class Nearest(torch.nn.Module):
    def __init__(self, tree, jitter):
        super().__init__()
        for k, v in tree.items():
            self.register_buffer(k, v)
        self.jitter = jitter

    def forward(self, q, t):
        tree = {k: getattr(self, k) for k in box_tree.TREE_KEYS}
        return search(q, tree, self.jitter, t.long())


@pytest.mark.parametrize("jitter", [0.0, 2.0])
def test_onnx_runtime_finds_the_same_frames(jitter):
    ort = pytest.importorskip("onnxruntime")
    features, landing = motion_like(n=3000)
    tree = box_tree.build(features, landing, leaf=12)
    module = Nearest(tree, jitter)
    q = queries(features, b=40)
    t = torch.arange(40.0)
    buf = io.BytesIO()
    torch.onnx.export(module, (q[:2], t[:2]), buf, dynamo=False, opset_version=17,
                      input_names=["q", "t"], output_names=["frame", "score"],
                      dynamic_axes={"q": {0: "b"}, "t": {0: "b"}})
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for i, b in ((0, 0), (0, 1), (1, 6), (7, 3), (20, 20)):
        feeds = {"q": q[i : i + b].numpy(), "t": t[i : i + b].numpy()}
        feeds = {x.name: feeds[x.name] for x in session.get_inputs()}   # no jitter: no t
        frame, score = session.run(None, feeds)
        ref, ref_score = module(q[i : i + b], t[i : i + b])
        np.testing.assert_array_equal(frame, ref.numpy())
        np.testing.assert_allclose(score, ref_score.numpy(), rtol=1e-6, atol=1e-3)


# ---- in motion matching ----------------------------------------------------------------------

def twin(model, **settings):
    """The same model with other matching ``settings`` (e.g. ``search_leaf=0``: brute force)."""
    if model.method == "cascade":
        cfg = copy.deepcopy(model.config)
        for stage in cfg["stages"]:
            if stage["method"] == "motion_match":
                stage.update(settings)
    else:
        cfg = {**model.config, **settings}
    other = build_model(cfg)
    other.load_state_dict(model.state_dict())
    return other.eval()


def brute_twin(model):
    """The same model searching by brute force (``search_leaf: 0``)."""
    brute = twin(model, search_leaf=0, search_leaves=0)
    if any(k.startswith("tree_") for k, _ in brute.named_buffers()):
        raise AssertionError("the brute-force twin built a tree")
    return brute


@pytest.mark.parametrize("jitter", [0.0, 1.0])
def test_motion_matching_publishes_what_brute_force_published(jitter):
    tiny = MotionMatching.presets["tiny"]
    model = MotionMatching({**tiny, "tie_jitter": jitter}).eval()
    assert model.has_tree
    twin = brute_twin(model)
    g = torch.Generator().manual_seed(0)
    lengths = torch.as_tensor(model.config["dummy_lengths"])
    x = load_source(model, g)
    with torch.no_grad():
        a = model.retarget(x, lengths[None])
        b = twin.retarget(x, lengths[None])
    assert torch.equal(a, b)
    assert (a - x).abs().max() > 0.05          # a real retarget, not the input played back


def load_source(model, g):
    """Two bodies: newly rendered instances of the database's motions, with sensor noise."""
    from streamtmr.models.motion_match import rendered_clips

    clips = rendered_clips(model.config["dummy_lengths"], ["wave", "squat", "walk_towards"],
                           seed=11, clips=2)
    t = min(len(c) for c in clips)
    x = torch.as_tensor(np.stack([c[:t] for c in clips]))
    return x + 0.01 * torch.randn(x.shape, generator=g)


def test_the_tree_is_rebuilt_on_load_and_never_stored(tmp_path):
    """A store-built database is stored in the checkpoint; its tree is derived at load."""
    from streamtmr.data.store import SkeletonStore
    from streamtmr.data.synth import generate

    root = generate(tmp_path / "s", n_subjects=4, n_actions=2, views=(0,), reps=1, seed=5,
                    progress=False)
    model = build_database(SkeletonStore(root), views=(0,), reps=None)
    assert model.has_tree
    assert not any(k.startswith("tree_") for k in model.state_dict())
    path = save_checkpoint(tmp_path / "mm.safetensors", model)
    loaded = load_checkpoint(path)
    assert loaded.has_tree
    for k in box_tree.TREE_KEYS:
        assert torch.equal(getattr(loaded, "tree_" + k), getattr(model, "tree_" + k))


@pytest.mark.skipif(not UTKINECT.is_dir(), reason=f"{UTKINECT} absent (real recordings "
                    "live in ../shared/data, outside a fresh clone)")
def test_the_shipped_matcher_on_real_people_exactly_searched_by_the_tree():
    """UTKinect segments (real people, the sensor's clock) through the shipped matcher's
    database: the exact tree search (``search_leaves: 0``) publishes what brute force publishes,
    to the bit; the shipped capped search (64 leaves) differs from it on some frames, by
    design (``bench/capped_search.py`` measures how often)."""
    from streamtmr.data.utkinect import on_sensor_clock, read_utkinect
    from streamtmr.models.checkpoint import resolve_model

    shipped = resolve_model("matcher").eval()
    assert shipped.stages[-1].config["search_leaves"] == 64
    exact, brute = twin(shipped, search_leaves=0), brute_twin(shipped)
    lengths = torch.as_tensor(shipped.stages[-1].config["dummy_lengths"])[None]
    capped_differs = False
    for seg in read_utkinect(UTKINECT)[::20]:
        x = torch.nan_to_num(torch.as_tensor(on_sensor_clock(seg.joints, seg.frame_ids)))[None]
        with torch.no_grad():
            y = exact.retarget(x, lengths)
            assert torch.equal(y, brute.retarget(x, lengths))
            capped_differs |= not torch.equal(y, shipped.retarget(x, lengths))
    assert capped_differs


def test_the_step_graph_searches_any_number_of_bodies_and_holds_one_copy():
    """Through ONNX Runtime the tree's step equals PyTorch's for batches other than the one
    it was traced with, and the graph holds the features once (the tree's leaf-ordered copy;
    the cost of continuing a clip reads it too)."""
    import onnx

    from engines import create_engine

    model = MotionMatching(MotionMatching.presets["tiny"]).eval()
    assert model.features_in_tree
    g = torch.Generator().manual_seed(1)
    x = load_source(model, g)
    x = torch.cat([x, x.flip(0) + 0.02, x[:1] - 0.01])[:, :30]              # 5 bodies
    engine = create_engine("onnxruntime", model=model, window=None)
    for b in (1, 5):
        state, ref_state = engine.init_state(b), model.init_state(b)
        lengths = torch.as_tensor(model.config["dummy_lengths"])[None].expand(b, -1)
        for t in range(x.shape[1]):
            y, state = engine.step(x[:b, t].numpy(), state)
            with torch.no_grad():
                ref, ref_state = model.step(x[:b, t], ref_state, lengths)
            np.testing.assert_allclose(y, ref.numpy(), atol=1e-4)
    graph = onnx.load(str(engine.source.onnx_file()))
    shapes = [list(n.attribute[0].t.dims) for n in graph.graph.node if n.op_type == "Constant"]
    shapes += [list(i.dims) for i in graph.graph.initializer]
    assert list(model.features.shape) not in shapes
    engine.close()


def test_a_call_without_a_search_runs_none_of_it():
    """No body needs a search on most calls: the search is skipped eagerly, in its TorchScript
    form, and in the exported step graph (an ONNX ``If`` holds every use of the tree's
    representatives)."""
    import onnx

    from engines import create_engine
    from streamtmr.models.motion_match import brute_search, tree_search

    q, t = torch.randn(3, 12), torch.arange(3.0)
    none = torch.zeros(3, dtype=torch.bool)
    empty = torch.zeros(0, 12)
    for search in (tree_search, torch.jit.script(tree_search)):
        frame, cost = search(q, none, t, {}, 0, 0.0)         # {}: the tree is never read
        assert frame.tolist() == [0, 0, 0] and torch.isinf(cost).all()
    frame, cost = brute_search(q, none, t, empty, torch.zeros(0), 0.0)
    assert frame.tolist() == [0, 0, 0] and torch.isinf(cost).all()

    model = MotionMatching(MotionMatching.presets["tiny"]).eval()
    engine = create_engine("onnxruntime", model=model, window=None)
    graph = onnx.load(str(engine.source.onnx_file())).graph
    engine.close()
    # the representatives and the leaf boxes ([leaves, D] tables) are read only by the search
    table = {tuple(model.tree_rep_feat.shape), tuple(model.tree_rep_feat.T.shape)}

    def tables(g):
        held = [tuple(i.dims) for i in g.initializer]
        held += [tuple(n.attribute[0].t.dims) for n in g.node if n.op_type == "Constant"]
        return [d for d in held if d in table]

    branches = {a.name: a.g for n in graph.node if n.op_type == "If" for a in n.attribute}
    assert set(branches) == {"then_branch", "else_branch"}
    assert not tables(graph) and not tables(branches["else_branch"])
    assert len(tables(branches["then_branch"])) >= 3      # representatives, box corners


class HostWaits(TorchDispatchMode):
    """Counts the operations that make the host wait for the device's results (data-dependent
    shapes, a tensor read as a Python value): a CUDA graph cannot capture them."""

    WAITS = {"aten.nonzero.default", "aten.is_nonzero.default", "aten.item.default",
             "aten._local_scalar_dense.default", "aten.masked_select.default"}

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in self.WAITS:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("search", [{"search_leaves": 3}, {"search_leaf": 0}, {}],
                         ids=["capped", "brute", "exact"])
def test_on_cuda_every_body_is_searched_masked_and_the_host_never_waits(search, monkeypatch):
    """On CUDA the step searches every body and masks the others (``gate`` off): the same
    published frames, and, for the capped and the brute-force search, no operation that waits
    on the host, so the torch engine captures the step as a CUDA graph; the exact tree search
    prunes to a data-dependent size and says so (``cuda_graph_blocker``). Checked here on the
    CPU by forcing the CUDA form; tests/test_engines.py captures it on a GPU."""
    from engines.torch_engine import graph_blocker
    from streamtmr.models import motion_match

    model = MotionMatching({**MotionMatching.presets["tiny"], **search}).eval()
    frames = torch.from_numpy(np.random.default_rng(3).normal(0, 0.3, (40, 4, 25, 3))
                              .astype(np.float32)) + torch.tensor([0.0, 1.0, 2.5])

    def stream(record: bool):
        state, out, waits = model.init_state(4), [], []
        with torch.inference_mode():
            for i, x in enumerate(frames):
                if i == 7:  # body 2 enters anew: from now on it searches on other frames
                    state = {k: torch.cat([v[:2], model.init_state(1)[k], v[3:]])
                             for k, v in state.items()}
                with HostWaits() as w:
                    y, state = model.step(x, state)
                out.append(y)
                waits += w.seen if record else []
        return torch.stack(out), waits

    gated, waits = stream(record=True)
    assert "aten.nonzero.default" in waits            # the CPU form branches on the host
    def masked(search):
        return lambda *args, **kwargs: search(*args, **{**kwargs, "gate": False})

    for fn in ("tree_search", "brute_search"):
        monkeypatch.setattr(motion_match, fn, masked(getattr(motion_match, fn)))
    masked, waits = stream(record=True)
    assert torch.equal(masked, gated)
    blocker = graph_blocker(model)
    if search.get("search_leaves") or search.get("search_leaf") == 0:
        assert waits == [] and blocker is None
    else:
        assert waits and "exact tree search" in blocker


# ---- a capped search (search_leaves) -------------------------------------------------------

def test_a_capped_search_over_every_leaf_is_the_exact_search():
    features, landing = motion_like(seed=4)
    tree = box_tree.build(features, landing, leaf=12)
    q = queries(features, seed=5)
    frame, score = box_tree.capped_nearest(q, tree, SCALE, len(tree["rep_feat"]))
    ref, ref_score = brute(q, features, landing)
    assert torch.equal(frame, ref)
    torch.testing.assert_close(score, ref_score, rtol=1e-6, atol=1e-3)


def capped_reference(q, tree, features, landing, k, noise=None):
    """Per query, by hand: the frames of the k leaves whose representatives are nearest, their
    scores on the grid (plus ``noise(frames, i)``), the first frame of the smallest."""
    rep = torch.addmm(tree["rep_score"][None], q, tree["rep_feat"].T, alpha=-2.0)
    leaves = torch.topk(rep, k, dim=1, largest=False).indices
    out = []
    for i in range(len(q)):
        own = tree["leaf_frame"][leaves[i]].reshape(-1)
        own = own[(own >= 0) & torch.isfinite(landing[own.clamp_min(0)])]
        s = torch.round((landing[own] - 2.0 * features[own] @ q[i]) * SCALE) / SCALE
        key = s if noise is None else s + noise(own, i)
        out.append(own[key == key.min()].min())
    return torch.stack(out)


def test_a_capped_search_reads_only_its_leaves_and_never_beats_the_exact_one():
    features, landing = motion_like(seed=6)
    tree = box_tree.build(features, landing, leaf=12)
    q = queries(features, seed=7)
    ref, ref_score = brute(q, features, landing)
    frame, score = box_tree.capped_nearest(q, tree, SCALE, 4)
    assert torch.equal(frame, capped_reference(q, tree, features, landing, 4))
    assert (score >= ref_score - 1e-3).all()
    same = (frame == ref).float().mean()
    assert 0.5 < same < 1.0   # mostly the exact frame here, not always: a cap, not a bound


def test_a_capped_search_without_a_candidate_and_with_jitter():
    features, landing = motion_like(n=500)
    tree = box_tree.build(features, landing, leaf=8)
    q = torch.stack([features[3], torch.full_like(features[0], torch.nan)])
    frame, score = box_tree.capped_nearest(q, tree, SCALE, 2)
    assert frame[0] == brute(q[:1], features, landing)[0][0]
    assert frame[1] == 0 and score[1] >= box_tree.NO_FRAME
    # near-tie jitter: the same rule on (grid score + the body's hash noise)
    g = torch.Generator().manual_seed(3)
    qj = features[torch.randint(len(features), (12,), generator=g)] \
        + 0.05 * torch.randn(12, features.shape[1], generator=g)
    t = torch.arange(12) * 7
    jittered, _ = box_tree.capped_nearest(qj, tree, SCALE, 3, 2.0, t)
    plain, _ = box_tree.capped_nearest(qj, tree, SCALE, 3)
    expected = capped_reference(qj, tree, features, landing, 3,
                                lambda f, i: box_tree.tie_noise(f[None], t[i:i + 1, None], 2.0)[0])
    assert torch.equal(jittered, expected)
    assert not torch.equal(jittered, plain)       # the jitter chose other frames somewhere


@pytest.mark.parametrize("cap", [-1, 2.5, "8", True])
def test_a_bad_search_leaves_is_refused_by_name(cap):
    with pytest.raises(ValueError, match="search_leaves must be an integer >= 0"):
        MotionMatching({**MotionMatching.presets["tiny"], "search_leaves": cap})
    with pytest.raises(ValueError, match="needs search_leaf > 0"):
        MotionMatching({**MotionMatching.presets["tiny"], "search_leaves": 4, "search_leaf": 0})


def test_a_capped_matcher_steps_alike_in_pytorch_and_onnx_runtime():
    pytest.importorskip("onnxruntime")
    from engines import create_engine

    tiny = MotionMatching.presets["tiny"]
    model = MotionMatching({**tiny, "search_leaves": 2}).eval()
    exact = MotionMatching(tiny).eval()
    exact.load_state_dict(model.state_dict())
    x = load_source(model, torch.Generator().manual_seed(1)).numpy()
    outs = {}
    for name, m in (("capped", model), ("exact", exact)):
        for backend in ("torch", "onnxruntime"):
            eng = create_engine(backend, model=m, window=None, threads=1)
            state, ys = eng.init_state(len(x)), []
            for t in range(x.shape[1]):
                y, state = eng.step(np.ascontiguousarray(x[:, t]), state)
                ys.append(y)
            outs[name, backend] = np.stack(ys, 1)
    np.testing.assert_allclose(outs["capped", "onnxruntime"], outs["capped", "torch"], atol=1e-4)
    assert np.abs(outs["capped", "torch"] - outs["exact", "torch"]).max() > 1e-3  # it capped


def test_the_capped_search_bench_compares_against_the_exact_search():
    """bench.capped_search's comparison: a cap over every leaf agrees everywhere and reads
    every representative and leaf; a small cap reads less and agrees less, never better."""
    from bench.capped_search import compare

    features, landing = motion_like(seed=8)
    tree = box_tree.build(features, landing, leaf=12)
    k_all = len(tree["rep_feat"])
    r = compare(queries(features, seed=9), tree, [2, k_all])
    full, small = r[f"leaves_{k_all}"], r["leaves_2"]
    assert full["same_frame"] == full["same_cost"] == 1.0 and full["excess"]["max"] <= 1e-3
    assert small["same_frame"] < 1.0 and small["excess"]["p50"] >= 0.0
    assert small["floats_read"] < r["exact_floats_read"]["p99"] <= full["floats_read"]
