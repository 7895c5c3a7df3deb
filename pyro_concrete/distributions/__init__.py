"""Distributions of pyro_concrete, one module per family."""

from .binary import BinaryConcrete, LogitBinaryConcrete
from .concrete import Concrete, ExpConcrete, GumbelSoftmax

__all__ = ["BinaryConcrete", "Concrete", "ExpConcrete", "GumbelSoftmax", "LogitBinaryConcrete"]
