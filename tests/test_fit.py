"""Head fitting: the row-span solver reaches sklearn's optimum, from any start, and the OOD axes agree with an SVD."""

from __future__ import annotations

import numpy as np
import pytest

from training import fit


def _problem(n: int, dims: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=[0.5, 0.15, 0.35])
    x = rng.normal(size=(n, dims)) @ rng.normal(size=(dims, dims)) * 0.3 + np.eye(3)[y] @ rng.normal(size=(3, dims))
    return (x + 5.0).astype(np.float32), y


def _sklearn_logits(x: np.ndarray, y: np.ndarray, settings: fit.HeadSettings) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    mean, scale = fit.standardisation(x)
    z = ((x - mean) / scale).astype(np.float64)
    model = LogisticRegression(C=settings.c, class_weight="balanced" if settings.balanced else None,
                               solver="newton-cg", tol=1e-10, max_iter=1000).fit(z, y)
    return z @ model.coef_.T + model.intercept_


def _centred(logits: np.ndarray) -> np.ndarray:
    return logits - logits.mean(axis=1, keepdims=True)  # softmax ignores a shift shared by the classes


@pytest.mark.parametrize("n, dims", [(120, 300), (400, 40)])  # fewer rows than features, and more
@pytest.mark.parametrize("settings", [fit.HeadSettings(0.1, True, False), fit.HeadSettings(1.0, False, False)])
def test_fit_linear_reaches_the_sklearn_optimum(n, dims, settings):
    x, y = _problem(n, dims)
    head = fit.fit_linear(x, y, 3, settings)
    np.testing.assert_allclose(_centred(head.logits(x)), _centred(_sklearn_logits(x, y, settings)), atol=2e-3)
    assert abs(head.bias.sum()) < 1e-9 and np.abs(head.kernel.sum(axis=1)).max() < 1e-9


def test_a_warm_start_and_a_shared_row_space_give_the_same_head():
    x, y = _problem(150, 200, seed=1)
    settings = fit.HeadSettings(1.0, True, False)
    cold = fit.fit_linear(x, y, 3, settings)
    space = fit.RowSpace.of(x)
    nearby = fit.fit_linear(x, y, 3, fit.HeadSettings(0.01, False, False), space)
    warm = fit.fit_linear(x, y, 3, settings, space, start=nearby)
    np.testing.assert_allclose(_centred(warm.logits(x)), _centred(cold.logits(x)), atol=2e-3)
    coef, intercept = space.coordinates_of(cold)  # a head maps to itself in its own space
    np.testing.assert_allclose(_centred(space.coordinates @ coef + intercept), _centred(cold.logits(x)), atol=1e-6)


def test_fit_linear_needs_every_class():
    x, y = _problem(60, 20)
    with pytest.raises(ValueError, match="need all of 0..2"):
        fit.fit_linear(x[y != 1], y[y != 1], 3, fit.HeadSettings(0.1, True, False))


def test_ood_axes_from_the_gram_matrix_match_an_svd():
    x, _ = _problem(100, 250, seed=2)
    mean, scale = fit.standardisation(x)
    z = ((x - mean) / scale).astype(np.float64)
    statistics = fit.ood_statistics(z, fit.RowSpace.of(x).gram)
    _, singular, vt = np.linalg.svd(z - z.mean(axis=0), full_matrices=False)
    k = fit.OOD_COMPONENTS
    np.testing.assert_allclose(statistics.scale, singular[:k] / np.sqrt(len(z) - 1), rtol=1e-8)
    np.testing.assert_allclose(np.abs(statistics.components @ vt[:k].T), np.eye(k), atol=1e-6)  # same axes, up to sign
