"""Ready-made Pyro models built on the package's distributions.

The categorical VAE here is the one model behind the demo (``python -m pyro_concrete.demo``),
the VAE benchmark (``benchmarks/vae.py``) and the notebooks.
"""

from .categorical_vae import ESTIMATORS, CategoricalVAE

__all__ = ["ESTIMATORS", "CategoricalVAE"]
