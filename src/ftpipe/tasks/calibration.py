"""Calibration of the classifiers' scores: temperature scaling fitted on validation, and the expected calibration
error (ECE) with the reliability bins behind its diagram.

A fine-tuned classifier's softmax (or sigmoid) scores are usually over-confident (Guo et al. 2017, "On Calibration
of Modern Neural Networks"): 0.99 on rows it gets right 90% of the time. Temperature scaling divides every logit by
one scalar ``T`` chosen to minimise the negative log-likelihood on the validation split: the predicted class (the
argmax, and any threshold moved along with it) stays the same, the scores become honest probabilities. The tasks fit
it in ``Task.finalize`` on the best weights and save it in the model's ``config.json`` as :data:`TEMPERATURE`;
``predict_outputs`` divides the logits by it (1 where a model has none), so evaluate and every later prediction read
calibrated scores.

ECE (Naeini et al. 2015; Guo et al.'s form): the scores fall into 15 equal-width bins over [0, 1]; ECE is the
row-weighted mean over bins of ``|observed frequency - mean score|``. For one label per text the score is the
top-label confidence and the outcome is "the predicted label is right"; for multi-label it is every (text, label)
pair's sigmoid score and the outcome "the text has the label" (the pairs pooled).

Written here in numpy: scikit-learn's ``calibration_curve`` drops empty bins and gives no counts to weigh bins by,
and torchmetrics' ``CalibrationError`` would be a new dependency for a dozen lines.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TEMPERATURE = "ftpipe_temperature"
"""The model config attribute holding the fitted temperature (the logits are divided by it before the activation)."""
BINS = 15  # Guo et al.'s choice, and what most papers report ECE with
BOUNDS = (0.1, 10.0)  # the temperatures searched: a tiny, separable validation split would otherwise push T to 0


def temperature_of(model_config: Any) -> float:
    """The temperature a model was saved with; 1 (the scores as they are) for a model without one."""
    value = getattr(model_config, TEMPERATURE, None)
    return float(value) if value else 1.0


def forget_temperature(model_config: Any) -> None:
    """Drop a temperature the model's config inherited from its base (a model ftpipe fine-tuned before): it was
    fitted to other weights, and with ``training.calibrate`` off the scores are to stay as the head gives them."""
    if getattr(model_config, TEMPERATURE, None) is not None:
        delattr(model_config, TEMPERATURE)


def _log_likelihoods(logits: np.ndarray, targets: np.ndarray, activation: str) -> np.ndarray:
    """Per-row log-likelihood of the targets (class indexes for softmax, multi-hot rows for sigmoid)."""
    from scipy.special import log_expit, log_softmax

    if activation == "softmax":
        return np.take_along_axis(log_softmax(logits, axis=1), targets[:, None].astype(np.int64), axis=1)[:, 0]
    positive = targets.astype(bool)
    return np.where(positive, log_expit(logits), log_expit(-logits)).sum(axis=1)


def nll(logits: np.ndarray, targets: np.ndarray, activation: str, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``logits / temperature`` (``softmax``: per row, ``sigmoid``: per row summed
    over its labels)."""
    logits = np.asarray(logits, dtype=np.float64) / temperature
    return float(-_log_likelihoods(logits, np.asarray(targets), activation).mean())


def fit_temperature(logits: np.ndarray, targets: np.ndarray, activation: str) -> float:
    """The temperature in :data:`BOUNDS` that minimises the NLL of ``logits / T`` on the given rows.

    The NLL is convex in ``1 / T`` (the logits scale linearly with it, and cross-entropy is convex in the logits),
    so a bounded Brent search over ``1 / T`` finds the global minimum. Without rows, T is 1.
    """
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets)
    if len(logits) == 0:
        return 1.0
    found = minimize_scalar(
        lambda inverse: nll(logits, targets, activation, 1.0 / inverse),
        bounds=(1.0 / BOUNDS[1], 1.0 / BOUNDS[0]),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(1.0 / found.x)


def reliability(scores: np.ndarray, outcomes: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    """ECE and the reliability bins of ``scores`` (probabilities in [0, 1]) against ``outcomes`` (0/1 per score).

    Bin ``i`` holds the scores in ``(i / bins, (i + 1) / bins]`` (0 in the first). Returns ``ece``, ``rows`` and
    ``bins``: one dict per non-empty bin with ``low``, ``high``, ``rows``, ``score`` (its mean score) and
    ``observed`` (the share of its outcomes that are 1).
    """
    scores = np.clip(np.asarray(scores, dtype=np.float64).ravel(), 0.0, 1.0)
    outcomes = np.asarray(outcomes, dtype=np.float64).ravel()
    index = np.clip(np.ceil(scores * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    score_sums = np.bincount(index, weights=scores, minlength=bins)
    outcome_sums = np.bincount(index, weights=outcomes, minlength=bins)
    total = max(len(scores), 1)
    found = []
    ece = 0.0
    for i in np.flatnonzero(counts):
        mean_score, observed = score_sums[i] / counts[i], outcome_sums[i] / counts[i]
        ece += counts[i] / total * abs(observed - mean_score)
        found.append(
            {
                "low": i / bins,
                "high": (i + 1) / bins,
                "rows": int(counts[i]),
                "score": float(mean_score),
                "observed": float(observed),
            }
        )
    return {"ece": float(ece), "rows": len(scores), "bins": found}


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    from scipy.special import softmax as scipy_softmax

    return scipy_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def sigmoid(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    from scipy.special import expit

    return expit(np.asarray(logits, dtype=np.float64) / temperature)


def top_label_ece(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """ECE of the top-label confidence of softmax(``logits / temperature``) against class indexes ``targets``."""
    probabilities = softmax(logits, temperature)
    correct = probabilities.argmax(axis=1) == np.asarray(targets)
    return reliability(probabilities.max(axis=1), correct)["ece"]


def pooled_ece(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """ECE of every (row, label) sigmoid score of ``logits / temperature`` against multi-hot ``targets``."""
    return reliability(sigmoid(logits, temperature), targets)["ece"]


def calibration_note(temperature: float, rows: int, before: tuple[float, float], after: tuple[float, float]) -> str:
    """The fine-tune report's line: the temperature, and validation NLL and ECE before and after it."""
    edge = " (at the edge of the search range)" if temperature >= BOUNDS[1] / 1.01 else ""
    return (
        f"temperature scaling: T = {temperature:.4f}{edge}, fitted on {rows} validation rows and saved as "
        f"{TEMPERATURE} in config.json (scores are softmax/sigmoid of logits / T; training.calibrate: false turns it "
        f"off); validation NLL {before[0]:.4f} -> {after[0]:.4f}, ECE ({BINS} bins) {before[1]:.4f} -> {after[1]:.4f} "
        "(measured on the rows T was fitted on: the test split's ECE in evaluate's report is the real one)"
    )


def calibrate(model_config: Any, logits: np.ndarray, targets: np.ndarray, activation: str) -> str:
    """Fit the temperature of validation ``logits`` (``softmax``: class indexes, ``sigmoid``: multi-hot ``targets``),
    store it in ``model_config`` as :data:`TEMPERATURE` (saved with the model) and return the report's line.

    A fit at the lower end of :data:`BOUNDS` keeps T = 1: the NLL falls all the way to T -> 0 when the model is
    right, with margin, on (nearly) every validation row, which says nothing about how sure to be on the rows it
    gets wrong. On the SMS sample (59 validation rows, none wrong) that fit, T = 0.1, took the test NLL from 0.14 to
    0.65 (``bench.calibration``).
    """
    if isinstance(logits, tuple):
        logits = logits[0]
    logits, targets = np.asarray(logits, dtype=np.float64), np.asarray(targets)
    ece = top_label_ece if activation == "softmax" else pooled_ece
    before = (nll(logits, targets, activation), ece(logits, targets))
    fitted = fit_temperature(logits, targets, activation)
    if fitted <= BOUNDS[0] * 1.01:
        setattr(model_config, TEMPERATURE, 1.0)
        return (
            f"temperature scaling: T = 1 kept (saved as {TEMPERATURE} in config.json): on {len(logits)} validation "
            f"rows the NLL falls all the way to T = {BOUNDS[0]} (the model is right, with margin, on nearly every "
            f"row), which cannot tell how sure to be on the rows it gets wrong; validation NLL {before[0]:.4f}, ECE "
            f"({BINS} bins) {before[1]:.4f}"
        )
    setattr(model_config, TEMPERATURE, fitted)
    after = (nll(logits, targets, activation, fitted), ece(logits, targets, fitted))
    return calibration_note(fitted, len(logits), before, after)
