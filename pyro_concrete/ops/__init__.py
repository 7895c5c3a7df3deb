"""The shared numerical kernels of pyro_concrete.

Every distribution of the package samples and scores through these functions, and they
are usable on their own in a plain PyTorch training loop. One submodule per role:

- :mod:`.noise`: Gumbel noise and safe logarithms;
- :mod:`.concrete`: the categorical Concrete sampler and log-densities.
"""

from .concrete import (
    concrete_log_density,
    exp_concrete_log_density,
    exp_concrete_log_density_at_noise,
    gumbel_softmax_log_sample,
)
from .noise import draw_gumbel, safe_log

__all__ = [
    "concrete_log_density",
    "draw_gumbel",
    "exp_concrete_log_density",
    "exp_concrete_log_density_at_noise",
    "gumbel_softmax_log_sample",
    "safe_log",
]
