"""pyro_concrete: the Concrete / Gumbel-Softmax relaxation for PyTorch and Pyro.

Importing the package registers its constraints' transforms with torch's ``biject_to``
and ``transform_to``.
"""

from . import constraints, ops
from .distributions import (
    BinaryConcrete,
    BinaryConcreteStraightThrough,
    Concrete,
    ConcreteStraightThrough,
    ExpConcrete,
    GumbelSoftmax,
    LogitBinaryConcrete,
)

__version__ = "0.1.0"

__all__ = [
    "BinaryConcrete",
    "BinaryConcreteStraightThrough",
    "Concrete",
    "ConcreteStraightThrough",
    "ExpConcrete",
    "GumbelSoftmax",
    "LogitBinaryConcrete",
    "__version__",
    "constraints",
    "ops",
]
