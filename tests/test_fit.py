"""OOD statistics: the axes from the rows' Gram matrix are the SVD's axes (fewer rows than features)."""

from __future__ import annotations

import numpy as np
import pytest

from training import fit


def test_ood_axes_from_the_gram_matrix_match_an_svd():
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(100, 250)) @ rng.normal(size=(250, 250)) * 0.3 + 5.0).astype(np.float32)
    mean, scale = fit.standardisation(x)
    z = (x - mean) / scale
    statistics = fit.ood_statistics(z)
    centred = (z - z.mean(axis=0)).astype(np.float64)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    k = fit.OOD_COMPONENTS
    np.testing.assert_allclose(statistics.scale, singular[:k] / np.sqrt(len(z) - 1), rtol=1e-8)
    np.testing.assert_allclose(np.abs(statistics.components @ vt[:k].T), np.eye(k), atol=1e-6)  # same axes, up to sign
    residual = z - (z @ vt[:k].T) @ vt[:k]
    assert statistics.residual == pytest.approx(float(np.mean(residual**2)), rel=1e-6)
