"""Exact nearest-frame search over a motion database, pruned by leaf spheres and boxes.

Motion matching compares a query ``q [B, D]`` with every searchable database frame ``f``: the
cost ``|q − f|²``, kept as ``score = |f|² − 2 q·f`` (``|q|²`` is the same for every frame),
rounded to a 1e-3 grid, the first frame on ties. By brute force that reads the whole feature
matrix (193k × 57 float32, 44 MB, for the shipped ``matcher``) at every search, and memory
bandwidth sets the step's latency. The tree reads a few percent of it and returns the same
frame:

1. **Leaves.** The searchable frames are split in halves along their principal direction
   again and again (a balanced PCA tree) into ``2^d`` leaves of ``M`` frames. Each leaf keeps
   one representative frame (the member nearest its mean), the radius of the sphere around it
   that holds every member, and its bounding box.
2. **An upper bound.** One product of the query with the representatives gives each
   representative's exact cost; the best of them bounds the best cost from above (``ub``).
3. **Lower bounds, from the same product.** A leaf whose representative lies at distance
   ``r`` holds no frame nearer than ``r − radius`` (the triangle inequality): leaves whose
   sphere is farther than ``ub`` (plus ``slack``) are dropped at no extra cost. The leaves left
   are checked against their box (the squared distance from ``q`` to a box bounds every member
   from below), which is tighter but costs a read of the box.
4. **Exact costs** of the frames in the leaves left, per body; the caller takes the minimum.

A frame that can win has a cost within ``slack`` of the best representative's (the caller
sizes ``slack`` for its rounding grid and tie jitter), so it is never pruned: the search is
exact, not approximate. Every step is a fixed sequence of tensor operations over data-dependent
sizes (``nonzero``, ``gather``), so it traces to ONNX (opset 17) like the rest of the step, and
every search function compiles with ``torch.jit.script`` (no globals, no callables), so that a
caller can put it inside a scripted branch (an ONNX ``If``) that runs only when a body searches.

:func:`capped_nearest` is the same tree read a fixed amount per query instead (step 2, then the
frames of the nearest representatives' leaves): not exact, for a bounded step cost.

The tree is derived data: built from the database whenever the model is built or loaded
(``bench/box_tree_pruning.py`` times it and measures the share each search reads), never
stored in a checkpoint.
"""

from __future__ import annotations

import math

import torch

DEFAULT_LEAF = 24  # frames per leaf (the leaves: a power of two near N / 24)
POWER_STEPS = 8  # power-iteration steps per split
SPLIT_DIMS = 16  # leading PCA coordinates that choose the splits
NO_FRAME = 1e18  # the score of "no frame": above any real one (finite: ONNX export needs it)
# (the search functions spell 1e18 and their hash constants out: TorchScript reads no globals)
TREE_KEYS = ("leaf_feat", "leaf_score", "leaf_frame", "leaf_lo", "leaf_hi", "leaf_radius",
             "rep_feat", "rep_score", "score_max")


@torch.no_grad()
def build(features: torch.Tensor, landing: torch.Tensor, leaf: int = DEFAULT_LEAF
          ) -> dict[str, torch.Tensor]:
    """The tree over the frames of ``features [N, D]`` whose ``landing [N]`` (``|f|²``) is finite.

    ``leaf``: the aimed frames per leaf. Returns tensors named by :data:`TREE_KEYS`; a frame's
    ``*_score`` is its ``landing`` (padding: +inf, never chosen).
    """
    if leaf < 1:
        raise ValueError(f"box_tree: leaf must be >= 1, got {leaf}")
    frames = torch.isfinite(landing).nonzero().squeeze(1)
    if len(frames) == 0:
        raise ValueError("box_tree: no searchable frame (every landing is +inf)")
    x = features[frames].float()                                      # (n, D)
    n, d = x.shape
    depth = round(math.log2(max(n / leaf, 1.0)))
    k = 2**depth
    m = -(-n // k)                                                    # frames per leaf
    pad = k * m - n
    idx = _leaves(x, depth, pad)                                      # (k, m), -1: pad
    real = idx >= 0                                                   # (k, m)
    xs = x[idx.clamp_min(0)]                                          # (k, m, D)
    lo = torch.where(real[..., None], xs, torch.inf).amin(1)
    hi = torch.where(real[..., None], xs, -torch.inf).amax(1)
    centre = (xs * real[..., None]).sum(1) / real.sum(1, keepdim=True).clamp_min(1)
    spread = torch.where(real, ((xs - centre[:, None]) ** 2).sum(2), torch.inf)
    rep = idx.gather(1, spread.argmin(1, keepdim=True)).squeeze(1)    # (k,), -1: empty leaf
    frame = torch.where(real, frames[idx.clamp_min(0)], 0)
    score = torch.where(real, landing[frame].float(), torch.inf)
    rep_frame = frames[rep.clamp_min(0)]
    reach = torch.where(real, ((xs - x[rep.clamp_min(0)][:, None]) ** 2).sum(2), 0.0)
    # widened by a float margin: the sphere must hold its members after rounding too
    radius = reach.amax(1).sqrt() * (1 + 1e-6) + 1e-6
    return {
        "leaf_feat": features[frame].float().reshape(k, m * d),      # leaf-contiguous copy
        "leaf_score": score, "leaf_frame": frame, "leaf_lo": lo, "leaf_hi": hi,
        "leaf_radius": radius,
        "rep_feat": features[rep_frame].float(),
        "rep_score": torch.where(rep >= 0, landing[rep_frame].float(), torch.inf),
        "score_max": landing[frames].float().max().reshape(1),
    }


def _leaves(x: torch.Tensor, depth: int, pad: int) -> torch.Tensor:
    """The rows of ``x [n, D]`` in ``2^depth`` leaves of equal size ``[2^depth, m]``, ``-1``
    where a leaf is padded (``pad`` slots, sorted to the right): every node halved along its
    principal direction, ``depth`` times."""
    n = len(x)
    # Split keys: the leading PCA coordinates (only the choice of splits reads them).
    y = x - x.mean(0)
    basis = torch.linalg.svd(y[:: max(1, n // 20000)], full_matrices=False).Vh[:SPLIT_DIMS]
    y = torch.cat([y @ basis.T, torch.zeros(pad, len(basis))])        # (n + pad, S)
    idx = torch.cat([torch.arange(n), torch.full((pad,), -1)])[None]  # (1, n + pad)
    for _ in range(depth):  # halve every node along its principal direction
        g, s = idx.shape
        real = (idx >= 0).unsqueeze(2)
        yg = y[idx.clamp_min(0)]                                      # (g, s, S)
        cnt = real.sum(1).clamp_min(1)
        mean = (yg * real).sum(1) / cnt
        c = (yg - mean[:, None]) * real                               # (g, s, S), centred
        # the node's principal direction: power iteration on its covariance, from its widest
        # PCA axis
        cov = c.transpose(1, 2) @ c                                   # (g, S, S)
        v = torch.nn.functional.one_hot(cov.diagonal(dim1=1, dim2=2).argmax(1),
                                        y.shape[1]).float()[..., None]
        for _ in range(POWER_STEPS):
            v = cov @ v
            v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)      # (g, S, 1)
        key = (c @ v).squeeze(2)                                      # (g, s)
        key = torch.where(idx >= 0, key, torch.inf)                   # padding sorts last
        idx = idx.gather(1, key.argsort(dim=1, stable=True)).reshape(2 * g, s // 2)
    return idx


def tie_noise(frame: torch.Tensor, key: torch.Tensor, jitter: float) -> torch.Tensor:
    """Near-tie jitter in ``[0, jitter)``: a deterministic hash of (frame index, the query's
    ``key``), broadcast over ``frame`` and ``key`` (int64). Knuth's multiplicative hash, exact
    in int64, so that PyTorch and ONNX Runtime draw the same noise."""
    h = (frame * 2654435761 + key * 40503) % 65536
    return jitter * h.to(torch.float32) / 65536


def box_distance(q: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Squared distance from points ``q [..., D]`` to boxes ``[lo, hi] [..., D]`` (broadcast):
    a lower bound of ``|q − f|²`` for every ``f`` in the box (+inf for an empty box)."""
    gap = torch.maximum(lo - q, q - hi).clamp_min(0.0)
    return (gap * gap).sum(-1)


def sphere_leaves(q: torch.Tensor, tree: dict[str, torch.Tensor], slack: float
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 2 and 3a: each query's upper bound ``ub [B]`` and the ``(body, leaf)`` pairs
    ``[P1]`` whose sphere lies within it, from one product with the representatives."""
    qq = (q * q).sum(1)                                                      # (B,)
    # float32 sums |f|² − 2 q·f + |q|² lose ~1e-7 of |q|² + |f|² to cancellation: allow 1e-5
    margin = 1e-5 * (qq + tree["score_max"])                                 # (B,)
    rep = torch.addmm(tree["rep_score"][None], q, tree["rep_feat"].T, alpha=-2.0)  # (B, K)
    ub = rep.amin(1) + qq + slack + margin                                   # (B,)
    reach = (rep + (qq - margin)[:, None]).clamp_min(0.0).sqrt()             # ≤ |q − rep|
    sphere = (reach - tree["leaf_radius"]).clamp_min(0.0) ** 2               # (B, K)
    pairs = (sphere <= ub[:, None]).nonzero()                               # (P1, 2)
    return pairs[:, 0], pairs[:, 1], ub


def candidates(q: torch.Tensor, tree: dict[str, torch.Tensor], slack: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The leaves that may hold the nearest frame of each query, with their frames' scores:
    ``body [P]``, ``frame [P, M]``, ``score [P, M]`` (``|f|² − 2 q·f``, unrounded), a
    superset of the frames whose cost is within ``slack`` of the best (module docstring)."""
    d = tree["leaf_lo"].shape[1]
    m = tree["leaf_frame"].shape[1]
    pb, pl, ub = sphere_leaves(q, tree, slack)                               # (P1,) pairs
    near = box_distance(q[pb], tree["leaf_lo"][pl], tree["leaf_hi"][pl])      # (P1,)
    keep = (near <= ub[pb]).nonzero().squeeze(1)                             # (P,)
    body, leaf = pb[keep], pl[keep]
    feat = tree["leaf_feat"][leaf].reshape(-1, m, d)                         # (P, M, D)
    dot = torch.bmm(feat, q[body][:, :, None]).squeeze(2)                    # (P, M)
    return body, tree["leaf_frame"][leaf], tree["leaf_score"][leaf] - 2.0 * dot


def _beyond_every_frame(q: torch.Tensor) -> torch.Tensor:
    """An int64 beyond every frame index, on ``q``'s device: exact as a double, as ONNX export
    needs; a typed tensor, so that a scripted export keeps the frame indices int64; filled on
    the device, not copied from the host (a host copy cannot be captured in a CUDA graph)."""
    return torch.full((), 2**62, dtype=torch.int64, device=q.device)


def nearest(q: torch.Tensor, tree: dict[str, torch.Tensor], scale: float, jitter: float = 0.0,
            key: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The best frame of each query ``q [B, D]`` and its score ``|f|² − 2 q·f`` on the
    ``1 / scale`` grid: the smallest score (plus :func:`tie_noise` of the frame and the query's
    ``key [B]`` where ``jitter`` > 0), the first frame on ties; what a brute-force ``argmin``
    over all frames in index order gives. Returns ``(frame [B], score [B])``."""
    big = _beyond_every_frame(q)
    body, frame, score = candidates(q, tree, slack=2.0 / scale + jitter)
    score = torch.round(score * scale) / scale
    cost = score
    if jitter > 0 and key is not None:
        cost = score + tie_noise(frame, key[body][:, None], jitter)
    row = cost.amin(1)                                                       # (P,)
    row_frame = torch.where(cost == row[:, None], frame, big).amin(1)
    row_score = torch.where(frame == row_frame[:, None], score, torch.inf).amin(1)
    # A sentinel row that every body owns (frame 0, score NO_FRAME): a body with no candidate
    # (a non-finite query) gets frame 0 and that score, and no reduction is ever empty.
    none = torch.full((1,), 1e18, dtype=score.dtype, device=q.device)      # NO_FRAME
    row = torch.cat([row, none])                                             # (P + 1,)
    row_frame = torch.cat([row_frame, torch.zeros(1, dtype=frame.dtype, device=q.device)])
    row_score = torch.cat([row_score, none])
    bodies = torch.cumsum(torch.ones_like(q[:, 0], dtype=torch.int64), 0) - 1  # (B,): 0..B-1
    mine = torch.cat([body[None] == bodies[:, None], (bodies >= 0)[:, None]], 1)  # (B, P + 1)
    best = torch.where(mine, row[None], torch.inf).amin(1)                   # (B,)
    win = mine & (row[None] == best[:, None])
    best_frame = torch.where(win, row_frame[None], big).amin(1)
    best_score = torch.where(win & (row_frame[None] == best_frame[:, None]), row_score[None],
                             torch.inf).amin(1)
    return best_frame, best_score


def capped_nearest(q: torch.Tensor, tree: dict[str, torch.Tensor], scale: float, leaves: int,
                   jitter: float = 0.0, key: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The best frame of each query ``q [B, D]`` among the frames of its ``leaves`` leaves with
    the nearest representatives, on :func:`nearest`'s grid and tie rule: ``(frame [B],
    score [B])``. Not exact: a fixed amount of reading per query.

    Exact search reads more the farther a query lies from the database (the bounds loosen),
    and real people's queries lie far: those searches set the tail of the step's latency.
    This one reads the representatives (step 2) and ``leaves × M`` frames, for any query.
    Where the best frame lies in another leaf, it returns a frame of nearly the same cost
    (``bench/capped_search.py`` measures how often, and by how much)."""
    big = _beyond_every_frame(q)
    b, d = q.shape
    m = tree["leaf_frame"].shape[1]
    rep = torch.addmm(tree["rep_score"][None], q, tree["rep_feat"].T, alpha=-2.0)  # (B, K)
    k = min(int(leaves), rep.shape[1])
    leaf = torch.topk(rep, k, dim=1, largest=False, sorted=False).indices         # (B, k)
    feat = tree["leaf_feat"][leaf].reshape(b, k * m, d)                          # (B, k·M, D)
    frame = tree["leaf_frame"][leaf].reshape(b, k * m)
    score = tree["leaf_score"][leaf].reshape(b, k * m) \
        - 2.0 * torch.bmm(feat, q[:, :, None]).squeeze(2)
    score = torch.round(score * scale) / scale
    cost = score
    if jitter > 0 and key is not None:
        cost = score + tie_noise(frame, key[:, None], jitter)
    best = cost.amin(1)                                                          # (B,)
    best_frame = torch.where(cost == best[:, None], frame, big).amin(1)
    best_score = torch.where(frame == best_frame[:, None], score, torch.inf).amin(1)
    # a non-finite query matches nothing: frame 0 and NO_FRAME, as in nearest()
    none = best_frame == big
    return (torch.where(none, torch.zeros_like(best_frame), best_frame),
            torch.where(none, torch.full_like(best_score, 1e18), best_score))  # NO_FRAME
