"""Head fitting on cached features: standardisation, L2 logistic regression, OOD statistics.

Every fit is a closed problem on cached features (L-BFGS, single-threaded BLAS so parallel
work on a small machine does not thrash), so the repeated cross-validation that chooses
the settings costs seconds per candidate, not epochs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from lung_classifier.model.head import Head
from training.calibration import Calibration

OOD_COMPONENTS = 32


@dataclass(frozen=True)
class HeadSettings:
    """What model selection compares: regularisation, class weighting, flip augmentation."""

    c: float  # inverse L2 strength of the logistic regression
    balanced: bool  # weight classes inversely to their frequency
    flip_augment: bool  # add each training slice's left-right mirror as a training row

    def describe(self) -> str:
        return (f"C={self.c:g}, {'balanced' if self.balanced else 'unweighted'} classes, "
                f"{'with' if self.flip_augment else 'no'} flip augmentation")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LinearHead:
    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    kernel: np.ndarray  # (D, C)
    bias: np.ndarray  # (C,)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.kernel + self.bias


def standardisation(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and scale; dead ReLU channels get scale 1 instead of 0."""
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    return mean, np.where(scale > 1e-6, scale, 1.0)


def training_rows(views: dict[str, np.ndarray], y: np.ndarray, rows: np.ndarray,
                  settings: HeadSettings) -> tuple[np.ndarray, np.ndarray]:
    """The feature rows a head is fitted on: the plain views, plus mirrored ones if asked."""
    if settings.flip_augment:
        return np.concatenate([views["plain"][rows], views["flip"][rows]]), np.concatenate([y[rows], y[rows]])
    return views["plain"][rows], y[rows]


def fit_linear(x: np.ndarray, y: np.ndarray, n_classes: int, settings: HeadSettings) -> LinearHead:
    """Multinomial logistic regression on standardised features."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = standardisation(x)
    with threadpool_limits(limits=1, user_api="blas"):
        model = LogisticRegression(C=settings.c, class_weight="balanced" if settings.balanced else None,
                                   max_iter=5000, tol=1e-5)
        model.fit((x - mean) / scale, y)
    if list(model.classes_) != list(range(n_classes)):
        raise ValueError(f"training rows hold classes {list(model.classes_)}, need all of 0..{n_classes - 1}")
    return LinearHead(mean, scale, model.coef_.T.copy(), model.intercept_.copy())


@dataclass(frozen=True)
class OodStatistics:
    components: np.ndarray  # (K, D) principal axes of standardised training features
    scale: np.ndarray  # (K,) their standard deviations
    residual: float  # mean squared off-subspace residual on training features

    def scores(self, z: np.ndarray) -> np.ndarray:
        """The same score as lung_classifier.model.network.head_outputs: ~1 on training data."""
        projected = z @ self.components.T
        inside = np.mean((projected / self.scale) ** 2, axis=-1)
        residual = np.mean((z - projected @ self.components) ** 2, axis=-1)
        return 0.5 * (inside + residual / self.residual)


def ood_statistics(z_train: np.ndarray) -> OodStatistics:
    """Principal axes of standardised train features, their scales, and the off-axis residual.

    The axes are the top eigenvectors of the smaller Gram matrix: rows x rows when there are
    fewer rows than features (a fold's ~700 x 700 instead of an SVD over 3584 columns).
    """
    from scipy.linalg import eigh

    n, dims = z_train.shape
    k = min(OOD_COMPONENTS, n - 1)
    centred = (z_train - z_train.mean(axis=0)).astype(np.float64)
    with threadpool_limits(limits=1, user_api="blas"):
        if n <= dims:
            values, vectors = eigh(centred @ centred.T, subset_by_index=[n - k, n - 1])
            singular = np.sqrt(np.clip(values[::-1], 0.0, None))
            components = (vectors[:, ::-1] / np.maximum(singular, 1e-12)).T @ centred
        else:
            values, vectors = eigh(centred.T @ centred, subset_by_index=[dims - k, dims - 1])
            singular = np.sqrt(np.clip(values[::-1], 0.0, None))
            components = vectors[:, ::-1].T
    scale = singular / np.sqrt(n - 1)
    residual = z_train - (z_train @ components.T) @ components
    # With fewer features than axes nothing is left off-axis: floor it so the score stays finite.
    return OodStatistics(components, scale, max(float(np.mean(residual**2)), 1e-6))


def assemble(linear: LinearHead, ood: OodStatistics, calibration: Calibration, offsets: np.ndarray,
             ood_threshold: float) -> Head:
    """The package's head: calibration folded into the bias, decision offsets and OOD threshold beside it.

    softmax((z W + b') / T) with b' = b + T * calibration.bias equals the calibrated softmax.
    """
    temperature = calibration.temperature
    return Head(
        feature_mean=linear.mean, feature_scale=linear.scale, kernel=linear.kernel,
        bias=linear.bias + temperature * calibration.bias, temperature=np.array(temperature),
        decision_offsets=np.asarray(offsets), ood_components=ood.components, ood_scale=ood.scale,
        ood_residual=np.array(ood.residual), ood_threshold=np.array(ood_threshold),
    ).as_float32()
