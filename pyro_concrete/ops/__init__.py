"""The shared numerical kernels of pyro_concrete.

Every distribution of the package samples and scores through these functions, and they
are usable on their own in a plain PyTorch training loop. One submodule per role:

- :mod:`.noise`: Gumbel and Logistic noise, safe logarithms;
- :mod:`.concrete`: the categorical Concrete sampler and log-densities;
- :mod:`.binary`: the binary Concrete sampler and log-densities;
- :mod:`.straight_through`: hard samples with the ST, Gumbel-Rao and ReinMax gradients.
"""

from .binary import (
    binary_concrete_log_density,
    binary_concrete_log_density_at_logit,
    binary_concrete_logit_sample,
    logit_binary_concrete_log_density,
    safe_logit,
)
from .concrete import (
    concrete_log_density,
    concrete_log_density_at_log_value,
    exp_concrete_log_density,
    exp_concrete_log_density_of_own_sample,
    gumbel_softmax_log_sample,
)
from .noise import draw_gumbel, draw_logistic, draw_softmax_noise, neg_logistic_log_density, safe_log
from .straight_through import (
    ESTIMATORS,
    binary_straight_through_sample,
    check_estimator,
    conditional_gumbel,
    conditional_logistic,
    sample_binary,
    sample_one_hot,
    straight_through_sample,
)

__all__ = [
    "ESTIMATORS",
    "binary_concrete_log_density",
    "binary_concrete_log_density_at_logit",
    "binary_concrete_logit_sample",
    "binary_straight_through_sample",
    "check_estimator",
    "concrete_log_density",
    "concrete_log_density_at_log_value",
    "conditional_gumbel",
    "conditional_logistic",
    "draw_gumbel",
    "draw_logistic",
    "draw_softmax_noise",
    "exp_concrete_log_density",
    "exp_concrete_log_density_of_own_sample",
    "gumbel_softmax_log_sample",
    "logit_binary_concrete_log_density",
    "neg_logistic_log_density",
    "safe_log",
    "safe_logit",
    "sample_binary",
    "sample_one_hot",
    "straight_through_sample",
]
