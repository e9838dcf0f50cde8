"""A small exact t-SNE (van der Maaten & Hinton 2008) in numpy, and PCA.

Exact O(N²) affinities and gradients: fine for the few thousand points of an embedding plot.
"""

from __future__ import annotations

import numpy as np


def pca(x: np.ndarray, dims: int = 2) -> np.ndarray:
    """Projection of ``x [N, D]`` on its first ``dims`` principal components."""
    x = np.asarray(x, np.float64)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:dims].T


def _affinities(x: np.ndarray, perplexity: float, tol: float = 1e-5, iters: int = 60
                ) -> np.ndarray:
    """Symmetric joint probabilities P with per-point Gaussian bandwidths matching the
    perplexity (binary search on the precision)."""
    n = len(x)
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
    target = np.log(perplexity)
    p = np.zeros((n, n))
    for i in range(n):
        d = np.delete(d2[i], i)
        lo, hi, beta = 0.0, np.inf, 1.0
        for _ in range(iters):
            w = np.exp(-(d - d.min()) * beta)
            s = w.sum()
            h = np.log(s) + beta * ((d - d.min()) * w).sum() / s  # entropy (nats)
            if abs(h - target) < tol:
                break
            if h > target:
                lo = beta
                beta = beta * 2 if hi == np.inf else (beta + hi) / 2
            else:
                hi = beta
                beta = (beta + lo) / 2
        p[i, np.arange(n) != i] = w / s
    p = (p + p.T) / (2 * n)
    return np.maximum(p, 1e-12)


def tsne(x: np.ndarray, dims: int = 2, perplexity: float = 30.0, iters: int = 500,
         seed: int = 0) -> np.ndarray:
    """t-SNE of ``x [N, D]`` → ``[N, dims]`` (inputs reduced to 50 PCA dimensions first;
    early exaggeration 12 for 100 iterations; momentum 0.5 → 0.8; learning rate N/12)."""
    x = np.asarray(x, np.float64)
    n = len(x)
    if n < 5:
        raise ValueError(f"t-SNE needs at least 5 points, got {n}")
    perplexity = min(perplexity, (n - 1) / 3)
    if x.shape[1] > 50:
        x = pca(x, 50)
    x = (x - x.mean(0)) / (x.std() + 1e-12)
    p = _affinities(x, perplexity)
    rng = np.random.default_rng(seed)
    y = rng.normal(scale=1e-4, size=(n, dims))
    vel = np.zeros_like(y)
    gains = np.ones_like(y)
    lr = max(n / 12.0, 50.0)
    for it in range(iters):
        exag = 12.0 if it < 100 else 1.0
        sq = (y * y).sum(1)
        num = 1.0 / (1.0 + np.maximum(sq[:, None] + sq[None, :] - 2 * y @ y.T, 0.0))
        np.fill_diagonal(num, 0.0)
        q = np.maximum(num / num.sum(), 1e-12)
        pq = (exag * p - q) * num
        grad = 4.0 * ((np.diag(pq.sum(1)) - pq) @ y)
        momentum = 0.5 if it < 250 else 0.8
        same = np.sign(grad) == np.sign(vel)
        gains = np.clip(np.where(same, gains * 0.8, gains + 0.2), 0.01, None)
        vel = momentum * vel - lr * gains * grad
        y = y + vel
        y = y - y.mean(0)
    return y


def kl_divergence(x: np.ndarray, y: np.ndarray, perplexity: float = 30.0) -> float:
    """KL(P‖Q) of a t-SNE layout ``y`` of ``x`` (lower is better)."""
    x = np.asarray(x, np.float64)
    n = len(x)
    p = _affinities((x - x.mean(0)) / (x.std() + 1e-12), min(perplexity, (n - 1) / 3))
    sq = (y * y).sum(1)
    num = 1.0 / (1.0 + np.maximum(sq[:, None] + sq[None, :] - 2 * y @ y.T, 0.0))
    np.fill_diagonal(num, 0.0)
    q = np.maximum(num / num.sum(), 1e-12)
    return float((p * np.log(p / q)).sum())
