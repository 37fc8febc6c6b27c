"""Calibration of out-of-fold logits: a temperature and per-class biases fitted by log-likelihood.

The head is trained with balanced class weights (so the rare Benign class is not ignored),
which shifts its logits towards the rare classes. Fitting a bias per class together with the
temperature, on out-of-fold logits with *unweighted* likelihood, undoes that shift: the
probabilities users see match how often each class is right, not the training weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize


@dataclass(frozen=True)
class Calibration:
    temperature: float
    bias: np.ndarray  # (C,), first entry 0 (softmax is shift-invariant)

    def scaled(self, logits: np.ndarray) -> np.ndarray:
        return logits / self.temperature + self.bias

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return softmax(self.scaled(logits))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def fit(logits: np.ndarray, y: np.ndarray) -> Calibration:
    """The temperature and biases minimising the mean negative log-likelihood of the true labels.

    Parametrised as (log T, bias[1:]) with the analytic gradient, so L-BFGS-B needs a few
    dozen evaluations instead of finite differences over every parameter at every step.
    """
    n_classes = logits.shape[1]
    onehot = np.eye(n_classes)[y]

    def nll(params: np.ndarray) -> tuple[float, np.ndarray]:
        calibration = Calibration(float(np.exp(params[0])), np.concatenate([[0.0], params[1:]]))
        scaled = calibration.scaled(logits)
        scaled = scaled - scaled.max(axis=1, keepdims=True)
        log_probabilities = scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))
        residual = (np.exp(log_probabilities) - onehot) / len(y)  # d(mean NLL) / d(scaled logits)
        # scaled = logits * exp(-params[0]) + bias: d scaled / d params[0] = -logits / T
        gradient = np.concatenate([[-float((residual * logits).sum()) / calibration.temperature],
                                   residual.sum(axis=0)[1:]])
        return float(-(log_probabilities * onehot).sum() / len(y)), gradient

    start = np.zeros(n_classes)
    result = minimize(nll, start, jac=True, method="L-BFGS-B",
                      bounds=[(-3.0, 3.0)] + [(-10.0, 10.0)] * (n_classes - 1))
    return Calibration(float(np.exp(result.x[0])), np.concatenate([[0.0], result.x[1:]]))
