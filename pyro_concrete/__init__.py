"""pyro_concrete: the Concrete / Gumbel-Softmax relaxation for PyTorch and Pyro.

Importing the package registers its constraints' transforms with torch's ``biject_to``
and ``transform_to``.
"""

from . import constraints, ops
from .distributions import Concrete, ExpConcrete, GumbelSoftmax

__version__ = "0.1.0"

__all__ = ["Concrete", "ExpConcrete", "GumbelSoftmax", "__version__", "constraints", "ops"]
