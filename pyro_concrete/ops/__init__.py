"""The shared numerical kernels of pyro_concrete.

Every distribution of the package samples and scores through these functions, and they
are usable on their own in a plain PyTorch training loop. Every kernel is a composition of
differentiable torch operations (derivatives of every order, ``torch.func``, JIT and
``torch.compile`` work) but one: in eager mode the categorical Gumbel-Rao estimator has a
hand-written backward pass that gives the composition's derivatives of every order, and
the composition itself runs under ``torch.func``, JIT and ``torch.compile``. Every kernel
reads the temperature the same way: a Python number or a Tensor with one temperature per
batch element (see :func:`~pyro_concrete.parameters.kernel_temperature`). One submodule per role:

- :mod:`.noise`: Gumbel and Logistic noise, safe logarithms;
- :mod:`.concrete`: the categorical Concrete sampler and log-densities;
- :mod:`.binary`: the binary Concrete sampler and log-densities;
- :mod:`.straight_through`: hard samples with the ST, Gumbel-Rao and ReinMax gradients;
- :mod:`.gumbel_rao`: the categorical Gumbel-Rao kernel and its noise.
"""

from .binary import (
    binary_concrete_log_density,
    binary_concrete_log_density_at_logit,
    binary_concrete_logit_sample,
    certain_outcomes,
    logit_binary_concrete_log_density,
    safe_logit,
)
from .concrete import (
    concrete_log_density,
    concrete_log_density_at_log_value,
    exp_concrete_log_density,
    gumbel_softmax_log_sample,
    structural_zeros,
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
    "certain_outcomes",
    "check_estimator",
    "concrete_log_density",
    "concrete_log_density_at_log_value",
    "conditional_gumbel",
    "conditional_logistic",
    "draw_gumbel",
    "draw_logistic",
    "draw_softmax_noise",
    "exp_concrete_log_density",
    "gumbel_softmax_log_sample",
    "logit_binary_concrete_log_density",
    "neg_logistic_log_density",
    "safe_log",
    "safe_logit",
    "sample_binary",
    "sample_one_hot",
    "straight_through_sample",
    "structural_zeros",
]
