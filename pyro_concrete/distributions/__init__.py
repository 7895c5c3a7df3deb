"""Distributions of pyro_concrete, one module per family."""

from .binary import BinaryConcrete, LogitBinaryConcrete
from .concrete import Concrete, ExpConcrete, GumbelSoftmax
from .straight_through import BinaryConcreteStraightThrough, ConcreteStraightThrough

__all__ = [
    "BinaryConcrete",
    "BinaryConcreteStraightThrough",
    "Concrete",
    "ConcreteStraightThrough",
    "ExpConcrete",
    "GumbelSoftmax",
    "LogitBinaryConcrete",
]
