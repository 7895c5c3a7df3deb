"""The main demo: a categorical VAE trained by SVI on binarised handwritten digits.

Run it with ``python -m pyro_concrete.demo`` (``--help`` for the options). It needs the
``demo`` extra (``pip install 'pyro-concrete[demo]'``: scikit-learn for the data,
matplotlib for the figure, tqdm for the progress bar).

Modules: :mod:`.data` (the digits and their fixed split), :mod:`.training` (SVI training
and held-out evaluation, shared with ``benchmarks/vae.py``), :mod:`.figure` (the PNG),
:mod:`.cli` (the command line). The model itself is
:class:`pyro_concrete.models.CategoricalVAE`.
"""

from .cli import DemoResult, main

__all__ = ["DemoResult", "main"]
