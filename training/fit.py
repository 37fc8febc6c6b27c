"""Head training on cached features, temperature calibration, OOD statistics.

Every fitted number comes from the train split, except the temperature and the OOD
threshold, which are calibrated on the validation split; the test split is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import keras
from scipy.optimize import minimize_scalar

from lung_classifier.model import Head
from training.evaluate import macro_f1

L2_GRID = (1.0, 3.0, 10.0, 30.0, 100.0)
"""Weight decay candidates, chosen by validation macro-F1 (Benign is rare: accuracy would hide it)."""
OOD_COMPONENTS = 32
OOD_QUANTILE = 0.975
"""Flag inputs scoring above this quantile of validation scores: ~2.5% of in-distribution slices."""


@dataclass(frozen=True)
class FitResult:
    head: Head
    history: dict[str, list[float]]  # per-epoch loss/accuracy of the chosen head
    l2: float
    search: dict[str, float]  # validation macro-F1 per L2 candidate


def standardisation(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and scale on train; dead ReLU channels get scale 1 instead of 0."""
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    return mean, np.where(scale > 1e-6, scale, 1.0)


def train_linear(z_train: np.ndarray, y_train: np.ndarray, z_val: np.ndarray, y_val: np.ndarray,
                 n_classes: int, l2: float, seed: int, epochs: int = 400) -> tuple[np.ndarray, np.ndarray, dict]:
    """Softmax regression with balanced class weights and early stopping on validation loss."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((z_train.shape[1],))
    logits = keras.layers.Dense(n_classes, kernel_regularizer=keras.regularizers.L2(l2))(inputs)
    model = keras.Model(inputs, logits)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    counts = np.bincount(y_train, minlength=n_classes)
    class_weight = {c: len(y_train) / (n_classes * max(counts[c], 1)) for c in range(n_classes)}
    history = model.fit(
        z_train, y_train, validation_data=(z_val, y_val), epochs=epochs, batch_size=64,
        class_weight=class_weight, shuffle=True, verbose=0,
        callbacks=[keras.callbacks.EarlyStopping(patience=40, restore_best_weights=True)],
    )
    kernel, bias = model.layers[-1].get_weights()
    return kernel, bias, {k: [float(v) for v in values] for k, values in history.history.items()}


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T minimising validation negative log-likelihood of softmax(logits / T)."""

    def nll(log_t: float) -> float:
        scaled = logits / np.exp(log_t)
        scaled = scaled - scaled.max(axis=1, keepdims=True)
        log_probs = scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))
        return float(-log_probs[np.arange(len(labels)), labels].mean())

    return float(np.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x))


def ood_statistics(z_train: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Principal axes of standardised train features, their scales, and the off-axis residual."""
    k = min(OOD_COMPONENTS, len(z_train) - 1)
    _, singular, vt = np.linalg.svd(z_train - z_train.mean(axis=0), full_matrices=False)
    components = vt[:k]
    scale = singular[:k] / np.sqrt(len(z_train) - 1)
    residual = z_train - (z_train @ components.T) @ components
    # With fewer features than axes nothing is left off-axis: floor it so the score stays finite.
    return components, scale, max(float(np.mean(residual**2)), 1e-6)


def fit(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
        n_classes: int, seed: int) -> FitResult:
    """Choose L2 on validation, then calibrate temperature and the OOD threshold there too."""
    mean, scale = standardisation(x_train)
    z_train, z_val = (x_train - mean) / scale, (x_val - mean) / scale
    candidates = {}
    for l2 in L2_GRID:
        kernel, bias, history = train_linear(z_train, y_train, z_val, y_val, n_classes, l2, seed)
        score = macro_f1(y_val, np.argmax(z_val @ kernel + bias, axis=1), n_classes)
        candidates[l2] = (score, kernel, bias, history)
        print(f"  L2={l2:g}: validation macro-F1 {score:.3f} after {len(history['loss'])} epochs")
    best = max(candidates, key=lambda l2: candidates[l2][0])
    _, kernel, bias, history = candidates[best]
    temperature = fit_temperature(z_val @ kernel + bias, y_val)
    components, ood_scale, residual = ood_statistics(z_train)
    head = Head(
        feature_mean=mean, feature_scale=scale, kernel=kernel, bias=bias,
        temperature=np.array(temperature), ood_components=components, ood_scale=ood_scale,
        ood_residual=np.array(residual), ood_threshold=np.array(np.inf),
    )
    head = _as_float32(head)
    return FitResult(head=head, history=history, l2=best,
                     search={f"{l2:g}": candidates[l2][0] for l2 in L2_GRID})


def with_ood_threshold(head: Head, validation_scores: np.ndarray) -> Head:
    """The head with its OOD threshold set at OOD_QUANTILE of validation scores."""
    threshold = np.quantile(validation_scores, OOD_QUANTILE)
    return _as_float32(Head(**{**head.__dict__, "ood_threshold": np.array(threshold)}))


def _as_float32(head: Head) -> Head:
    return Head(**{name: np.asarray(value, np.float32) for name, value in head.__dict__.items()})
