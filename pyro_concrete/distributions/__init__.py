"""Distributions of pyro_concrete, one module per family."""

from .concrete import Concrete, ExpConcrete, GumbelSoftmax

__all__ = ["Concrete", "ExpConcrete", "GumbelSoftmax"]
