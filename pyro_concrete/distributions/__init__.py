"""Distributions of pyro_concrete, one module per family."""

from .binary import BinaryConcrete, LogitBinaryConcrete
from .concrete import Concrete, ExpConcrete, GumbelSoftmax
from .permutation import GumbelSinkhorn, GumbelSinkhornStraightThrough
from .straight_through import BinaryConcreteStraightThrough, ConcreteStraightThrough
from .subset import RelaxedSubset, SubsetStraightThrough

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
]
