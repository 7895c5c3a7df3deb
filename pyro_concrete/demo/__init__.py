"""The main demo: a categorical VAE trained by SVI on binarised handwritten digits.

Run it with ``python -m pyro_concrete.demo`` (``--help`` for the options). It needs the
``demo`` extra (``pip install 'pyro-concrete[demo]'``: scikit-learn for the data,
matplotlib for the figure, tqdm for the progress bar).

Modules: :mod:`.model` (the categorical VAE, :class:`~.model.CategoricalVAE`), :mod:`.data`
(the digits and their fixed split), :mod:`.training` (SVI training and held-out evaluation,
shared with ``benchmarks/vae.py``), :mod:`.figure` (the PNG), :mod:`.cli` (the command
line). The model lives here because nothing but the demo and the VAE benchmark uses it: it
is an example built on the package, not part of the library's API.
"""

from .cli import DemoResult, main

__all__ = ["DemoResult", "main"]
