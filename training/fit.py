"""Head fitting on cached features: standardisation, L2 logistic regression, OOD statistics.

Every fit is a closed problem on cached features (L-BFGS, single-threaded BLAS so parallel
work on a small machine does not thrash), solved in the span of its training rows (n < D),
so the repeated cross-validation that chooses the settings costs seconds, not epochs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from lung_classifier.model import Head
from training.calibration import Calibration

OOD_COMPONENTS = 32
SOLVER_TOLERANCE = 1e-8
"""Largest gradient entry at which a head counts as fitted (sklearn's scale: per-row mean loss)."""
MAX_ITERATIONS = 20_000
SPAN_TOLERANCE = 1e-12
"""Directions of the training rows below this share of the largest Gram diagonal are treated as absent."""


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


def fit_linear(x: np.ndarray, y: np.ndarray, n_classes: int, settings: HeadSettings,
               space: RowSpace | None = None, start: LinearHead | None = None) -> LinearHead:
    """Multinomial logistic regression on standardised features.

    ``space``: RowSpace.of(x), if already built. ``start``: a head fitted on a nearby
    problem (the same fold, other settings) to start from; the answer is the same optimum.
    """
    if sorted(set(y.tolist())) != list(range(n_classes)):
        raise ValueError(f"training rows hold classes {sorted(set(y.tolist()))}, need all of 0..{n_classes - 1}")
    space = space if space is not None else RowSpace.of(x)
    coef, intercept = solve(space.coordinates, y, n_classes, class_weights(y, n_classes, settings.balanced), settings.c,
                            None if start is None else space.coordinates_of(start))
    kernel = space.weights(coef)
    return LinearHead(space.mean, space.scale, kernel, intercept - space.z.mean(axis=0) @ kernel)


@dataclass(frozen=True)
class RowSpace:
    """Standardised training rows in coordinates of their own span, from one Cholesky of their Gram matrix.

    An L2-penalised linear head's weights lie in the span of its training rows (any part
    outside it adds penalty and changes no training logit), so the head is solved in
    r <= n coordinates instead of D = 3584: the same optimum at a fraction of the work per
    iteration. Built once per fold and shared by every candidate fitted on the same rows,
    and by the fold's OOD statistics (the Gram matrix's top eigenvectors).
    """

    mean: np.ndarray  # (D,) standardisation
    scale: np.ndarray  # (D,)
    z: np.ndarray  # (n, D) standardised rows, float64
    gram: np.ndarray  # (n, n) of the centred rows
    coordinates: np.ndarray  # (n, r): coordinates @ coordinates.T == gram
    spanning: np.ndarray  # (r,) indices of rows whose centred features span the space
    triangle: np.ndarray  # (r, r) lower Cholesky factor of the spanning rows' Gram matrix

    @classmethod
    def of(cls, x: np.ndarray) -> RowSpace:
        from scipy.linalg import lapack

        mean, scale = standardisation(x)
        z = ((x - mean) / scale).astype(np.float64)
        centred = z - z.mean(axis=0)
        with threadpool_limits(limits=1, user_api="blas"):
            gram = centred @ centred.T
            factor, pivots, rank, info = lapack.dpstrf(gram, lower=1, tol=SPAN_TOLERANCE * gram.diagonal().max())
        if info < 0:
            raise ValueError(f"pivoted Cholesky failed (LAPACK info {info})")
        lower = np.tril(factor)[:, :rank]
        coordinates = np.empty_like(lower)
        coordinates[pivots - 1] = lower
        return cls(mean, scale, z, gram, coordinates, pivots[:rank] - 1, lower[:rank])

    def coordinates_of(self, head: LinearHead) -> tuple[np.ndarray, np.ndarray]:
        """(coefficients, intercept) in this space nearest another head: its weights projected onto the span."""
        from scipy.linalg import solve_triangular

        kernel = (self.scale / head.scale)[:, None] * head.kernel  # the same logits on this standardisation
        centred = self.z[self.spanning] - self.z.mean(axis=0)
        coef = solve_triangular(self.triangle, centred @ kernel, lower=True)
        mean_row = self.mean + self.z.mean(axis=0) * self.scale
        return coef, ((mean_row - head.mean) / head.scale) @ head.kernel + head.bias

    def weights(self, b: np.ndarray) -> np.ndarray:
        """(D, C) feature weights whose centred logits are coordinates @ b."""
        from scipy.linalg import solve_triangular

        centred = self.z[self.spanning] - self.z.mean(axis=0)
        return centred.T @ solve_triangular(self.triangle, b, lower=True, trans="T")


def class_weights(y: np.ndarray, n_classes: int, balanced: bool) -> np.ndarray:
    """Per-row weights: sklearn's "balanced" (n / (C * count of the row's class)) or all ones."""
    if not balanced:
        return np.ones(len(y))
    return (len(y) / (n_classes * np.bincount(y, minlength=n_classes)))[y]


def solve(coordinates: np.ndarray, y: np.ndarray, n_classes: int, weights: np.ndarray, c: float,
          start: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial L2 logistic regression, sklearn's objective (C * weighted log-loss + |w|^2 / 2, intercept free).

    Parametrised by the C-1 sum-zero directions of the class axis (the penalised optimum's
    class weights sum to zero, so nothing is lost), converged to SOLVER_TOLERANCE: tight
    enough that the answer is the optimum, not wherever a looser stopping rule left it.
    Returns (r, C) coefficients and the (C,) intercept, both summing to zero over classes.
    ``start``: coefficients and intercept to start from (a nearby problem's answer), else zeros.
    """
    r = coordinates.shape[1]
    k = n_classes - 1
    contrasts = np.linalg.qr(np.eye(n_classes) - 1.0 / n_classes)[0][:, :k]  # orthonormal, each column sums to 0
    share = weights / weights.sum()
    penalty = 1.0 / (c * weights.sum())  # the same optimum as sklearn's C * sum(loss) + |w|^2 / 2
    onehot = np.eye(n_classes)[y]

    def loss_and_gradient(theta: np.ndarray) -> tuple[float, np.ndarray]:
        coef, intercept = theta[:r * k].reshape(r, k), theta[r * k:]
        logits = (coordinates @ coef + intercept) @ contrasts.T
        logits -= logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        loss = -float(share @ (log_p * onehot).sum(axis=1)) + 0.5 * penalty * float((coef ** 2).sum())
        residual = ((np.exp(log_p) - onehot) * share[:, None]) @ contrasts
        return loss, np.concatenate([(coordinates.T @ residual + penalty * coef).ravel(), residual.sum(axis=0)])

    with threadpool_limits(limits=1, user_api="blas"):
        initial = np.zeros(r * k + k) if start is None else np.concatenate([(start[0] @ contrasts).ravel(),
                                                                            start[1] @ contrasts])
        result = minimize(loss_and_gradient, initial, jac=True, method="L-BFGS-B",
                          options={"maxiter": MAX_ITERATIONS, "gtol": SOLVER_TOLERANCE, "maxls": 50,
                                   "ftol": 64 * np.finfo(float).eps})
    if result.nit >= MAX_ITERATIONS:
        raise RuntimeError(f"the head did not converge in {MAX_ITERATIONS} iterations: {result.message}")
    return result.x[:r * k].reshape(r, k) @ contrasts.T, result.x[r * k:] @ contrasts.T


@dataclass(frozen=True)
class OodStatistics:
    components: np.ndarray  # (K, D) principal axes of standardised training features
    scale: np.ndarray  # (K,) their standard deviations
    residual: float  # mean squared off-subspace residual on training features

    def scores(self, z: np.ndarray) -> np.ndarray:
        """The same score as lung_classifier.model.head_outputs: ~1 on training data."""
        projected = z @ self.components.T
        inside = np.mean((projected / self.scale) ** 2, axis=-1)
        residual = np.mean((z - projected @ self.components) ** 2, axis=-1)
        return 0.5 * (inside + residual / self.residual)


def ood_statistics(z_train: np.ndarray, gram: np.ndarray | None = None) -> OodStatistics:
    """Principal axes of standardised train features, their scales, and the off-axis residual.

    The axes are the top eigenvectors of the smaller Gram matrix: rows x rows (``gram``, of
    the centred rows, if a RowSpace already holds it) when there are fewer rows than features.
    """
    from scipy.linalg import eigh

    n, dims = z_train.shape
    k = min(OOD_COMPONENTS, n - 1)
    centred = z_train - z_train.mean(axis=0)
    with threadpool_limits(limits=1, user_api="blas"):
        if n <= dims:
            gram = centred @ centred.T if gram is None else gram
            values, vectors = eigh(gram, subset_by_index=[n - k, n - 1])
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
