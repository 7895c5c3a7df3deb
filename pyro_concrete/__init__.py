"""pyro_concrete: the Concrete / Gumbel-Softmax relaxation for PyTorch and Pyro.

Importing the package registers its constraints' transforms with torch's ``biject_to``
and ``transform_to`` (:mod:`.transforms`) and its KL divergences with torch's
``kl_divergence`` (:mod:`.kl`).
"""

from . import constraints, infer, kl, ops, transforms
from .distributions import (
    BinaryConcrete,
    BinaryConcreteStraightThrough,
    Concrete,
    ConcreteStraightThrough,
    ExpConcrete,
    GumbelSinkhorn,
    GumbelSinkhornStraightThrough,
    GumbelSoftmax,
    LogitBinaryConcrete,
    RelaxedSubset,
    SubsetStraightThrough,
)

__version__ = "0.2.0.dev0"

__all__ = [
    "BinaryConcrete",
    "BinaryConcreteStraightThrough",
    "Concrete",
    "ConcreteStraightThrough",
    "ExpConcrete",
    "GumbelSinkhorn",
    "GumbelSinkhornStraightThrough",
    "GumbelSoftmax",
    "LogitBinaryConcrete",
    "RelaxedSubset",
    "SubsetStraightThrough",
    "__version__",
    "constraints",
    "infer",
    "kl",
    "ops",
    "transforms",
]
