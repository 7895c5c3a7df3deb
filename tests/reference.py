"""Independent float64 reference formulas, written from the papers with numpy/scipy.

Nothing here calls the library: these are what the library is checked against.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp


def concrete_log_density(x: np.ndarray, logits: np.ndarray, tau: float) -> float:
    """Maddison et al. 2017, eq. (9), in logs, for one point x of the open simplex."""
    k = len(logits)
    x = np.asarray(x, dtype=np.float64)
    log_x = np.log(x)
    return (
        math.lgamma(k)
        + (k - 1) * math.log(tau)
        + np.sum(logits - (tau + 1) * log_x)
        - k * logsumexp(logits - tau * log_x)
    )


def exp_concrete_log_density(y: np.ndarray, logits: np.ndarray, tau: float) -> float:
    """Maddison et al. 2017, appendix C: the density of y = log x."""
    k = len(logits)
    a = logits - tau * np.asarray(y, dtype=np.float64)
    return math.lgamma(k) + (k - 1) * math.log(tau) + np.sum(a) - k * logsumexp(a)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()
