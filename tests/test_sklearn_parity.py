"""scikit-learn's ROC-AUC, EER (from roc_curve) and t-SNE against the hand-written numpy code
they replace: run once, before the old code goes (the commit after this removes both)."""

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.manifold import TSNE, trustworthiness  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from streamtmr.eval import metrics, tsne  # noqa: E402


def sklearn_eer(scores, labels) -> float:
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    far = np.rint(fpr[::-1] * n_neg) / n_neg
    frr = np.rint((1 - tpr[::-1]) * n_pos) / n_pos
    i = int(np.argmin(np.abs(far - frr)))
    return float((far[i] + frr[i]) / 2)


def test_roc_auc_and_eer_equal_to_float_tolerance():
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(4, 400))
        labels = rng.integers(0, 2, n).astype(bool)
        if labels.all() or not labels.any():
            continue
        scores = rng.normal(size=n) + labels * rng.uniform(0, 2)
        if trial % 3 == 0:
            scores = np.round(scores, 1)  # ties
        assert roc_auc_score(labels, scores) == pytest.approx(metrics.roc_auc(scores, labels),
                                                              abs=1e-12)
        assert sklearn_eer(scores, labels) == pytest.approx(
            metrics.equal_error_rate(scores, labels), abs=1e-12)


@pytest.mark.parametrize("n,d,k", [(60, 8, 3), (300, 64, 5)])
def test_tsne_layouts_equally_faithful(n, d, k):
    rng = np.random.default_rng(n)
    lab = rng.integers(0, k, n)
    x = rng.normal(scale=4, size=(k, d))[lab] + rng.normal(size=(n, d))
    perp = min(30.0, (n - 1) / 3)
    y_old = tsne.tsne(x, perplexity=perp, iters=500, seed=0)
    y_new = TSNE(2, perplexity=perp, init="pca", random_state=0, max_iter=500).fit_transform(x)
    t_old, t_new = trustworthiness(x, y_old, n_neighbors=5), trustworthiness(x, y_new,
                                                                              n_neighbors=5)
    assert abs(t_old - t_new) < 0.01
    assert tsne.kl_divergence(x, y_new, perp) < 1.1 * tsne.kl_divergence(x, y_old, perp)
