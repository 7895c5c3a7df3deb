"""The Concrete (Gumbel-Softmax) distribution and its log-space twin, ExpConcrete."""

from __future__ import annotations

from typing import NamedTuple

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor
from torch.distributions import constraints as torch_constraints
from torch.distributions.utils import lazy_property

from .. import constraints, ops
from ._parameters import Number, concrete_parameters, temperature_batch_shape

__all__ = ["Concrete", "ExpConcrete", "GumbelSoftmax"]


class _OwnSample(NamedTuple):
    """What a distribution remembers of its most recent sample (never stored on the tensor)."""

    value: Tensor
    version: int | None
    log_value: Tensor  # the ExpConcrete sample y (equal to value for ExpConcrete)
    noise_log_density: Tensor


def _version(t: Tensor) -> int | None:
    # Inference-mode tensors have no version counter; they cannot be modified in place
    # outside inference mode, and identity is then the whole test.
    return None if t.is_inference() else t._version


class _ConcreteFamily(TorchDistribution):
    """Parameters, shapes, expand, pickling and the own-sample memory shared by both classes."""

    arg_constraints = {
        "temperature": constraints.positive_finite,
        "logits": torch_constraints.real_vector,
        "probs": constraints.simplex,
    }
    has_rsample = True

    def __init__(
        self,
        temperature: Tensor | Number,
        logits: Tensor | None = None,
        probs: Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        validate = self._validate_args if validate_args is None else validate_args
        params = concrete_parameters(temperature, logits, probs, event_dim=1, validate=validate)
        self.temperature = params.temperature
        self.logits = params.logits
        if params.probs is not None:
            self.probs = params.probs
        self._own_sample: _OwnSample | None = None
        # Values were checked above (with clearer messages and fewer passes than torch's
        # generic loop over arg_constraints); keep the caller's validate_args choice.
        super().__init__(params.batch_shape, params.event_shape, validate_args=False)
        if validate_args is None:
            del self._validate_args  # follow torch's global default, as torch does
        else:
            self._validate_args = validate_args

    @lazy_property
    def probs(self) -> Tensor:
        return torch.softmax(self.logits, dim=-1)

    @property
    def num_categories(self) -> int:
        return self._event_shape[0]

    @classmethod
    def infer_shapes(cls, temperature=(), logits=None, probs=None):
        """Batch and event shapes from argument shapes, with the temperature rule of ``__init__``."""
        shape = torch.Size(logits if logits is not None else probs)
        t_shape = temperature_batch_shape(torch.Size(temperature), shape, event_dim=1)
        return torch.broadcast_shapes(shape[:-1], t_shape), shape[-1:]

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(type(self), _instance)
        batch_shape = torch.Size(batch_shape)
        new.temperature = self.temperature.expand(batch_shape)
        new.logits = self.logits.expand(batch_shape + self._event_shape)
        if "probs" in self.__dict__:
            new.probs = self.probs.expand(batch_shape + self._event_shape)
        new._own_sample = None
        TorchDistribution.__init__(new, batch_shape, self._event_shape, validate_args=False)
        new.__dict__.pop("_validate_args")
        if "_validate_args" in self.__dict__:
            new._validate_args = self._validate_args
        return new

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_own_sample"] = None  # a sample is not part of the distribution
        return state

    def __repr__(self) -> str:
        t = self.temperature
        temperature = (
            f"{t.reshape(-1)[0].item():g}"
            if t.numel() and (t == t.reshape(-1)[0]).all()
            else (f"Tensor{tuple(t.shape)}")
        )
        return (
            f"{type(self).__name__}(temperature: {temperature}, logits: Tensor{tuple(self.logits.shape)}, "
            f"batch_shape: {tuple(self.batch_shape)}, event_shape: {tuple(self.event_shape)})"
        )

    # -- sampling -----------------------------------------------------------------

    def _draw(self, sample_shape) -> tuple[Tensor, Tensor, Tensor]:
        shape = self._extended_shape(torch.Size(sample_shape))
        gumbel, noise_log_density = ops.draw_gumbel(shape, self.logits.dtype, self.logits.device)
        log_value, value = ops.gumbel_softmax_log_sample(
            self.logits, self.temperature.unsqueeze(-1), gumbel, consume_noise=True
        )
        return log_value, value, noise_log_density

    def _remember(self, value: Tensor, log_value: Tensor, noise_log_density: Tensor) -> Tensor:
        self._own_sample = _OwnSample(value, _version(value), log_value, noise_log_density)
        return value

    def _recall(self, value: Tensor) -> _OwnSample | None:
        own = self._own_sample
        if own is not None and value is own.value and _version(value) == own.version:
            return own
        return None

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def _own_log_prob(self, own: _OwnSample) -> Tensor:
        return ops.exp_concrete_log_density_at_noise(
            own.noise_log_density, self.num_categories, self.temperature
        )


class ExpConcrete(_ConcreteFamily):
    r"""The Concrete distribution in log space (Maddison et al. 2017, appendix C).

    A sample is the log-probability vector ``y = log_softmax((logits + G) / temperature)``
    with ``G`` standard Gumbel noise; ``exp(y)`` is a :class:`Concrete` sample. Work in
    log space when the temperature is low: ``y`` stays finite where ``exp(y)`` underflows,
    and the KL term of an ELBO computed between ExpConcrete densities is stable.

    The density is

    .. math::
        \log p(y) = \log\Gamma(K) + (K-1)\log\tau + \sum_k (\theta_k - \tau y_k)
                    - K \operatorname{logsumexp}_k(\theta_k - \tau y_k).

    with respect to Lebesgue measure on the log-ratio coordinates ``u_k = y_k - y_K``,
    ``k < K`` (equivalently the permutation-symmetric measure ``dx / prod_k x_k`` on the
    simplex), the convention of torch's ``ExpRelaxedCategorical``. It is *not* a density of
    the first ``K - 1`` coordinates of ``y``; it is the one for which
    ``log p_X(x) = log p_Y(log x) - sum_k log x_k`` gives the :class:`Concrete` density, and
    for which the bijection ``u -> log_softmax([u, 0])`` has unit Jacobian.

    At the distribution's own most recent sample (the same tensor, unmodified) the density
    is evaluated in the closed form ``lgamma K + (K-1) log τ + Σ log E_k - K log Σ E_k``
    of the noise ``E = exp(-G)``, which is exact and costs no pass over the logits; any
    other value goes through the general formula. Both give the same number and the same
    gradients (the closed form is the same function of ``logits`` and ``temperature``).

    Args:
        temperature (float or Tensor): positive temperature, one per batch element: it
            broadcasts with ``logits.shape[:-1]``. A temperature of shape ``(..., 1)`` with
            as many dimensions as ``logits`` (torch's convention) has its last dimension
            dropped, so ``(n, 1)`` with logits ``(n, K)`` gives batch shape ``(n,)``. May
            require grad.
        logits (Tensor): ``(..., K)`` unnormalised log-probabilities (finite).
        probs (Tensor): ``(..., K)`` strictly positive probabilities summing to one.
        validate_args (bool, optional): whether to validate arguments and values.

    Example::

        >>> d = ExpConcrete(0.1, logits=torch.randn(4, 10))
        >>> y = d.rsample()              # (4, 10), finite, logsumexp(y, -1) == 0
        >>> d.log_prob(y).shape
        torch.Size([4])
    """

    support = constraints.log_simplex

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        log_value, _, noise_log_density = self._draw(sample_shape)
        return self._remember(log_value, log_value, noise_log_density)

    def log_prob(self, value: Tensor) -> Tensor:
        own = self._recall(value)
        if own is not None:
            # Zero-weighted link to the sample keeps log_prob in the autograd graph of the
            # logits: its exact derivative with respect to them is zero here.
            return self._own_log_prob(own) + value[..., 0] * 0
        if self._validate_args:
            self._validate_sample(value)
        return ops.exp_concrete_log_density(value, self.logits, self.temperature)


class Concrete(_ConcreteFamily):
    r"""The Concrete (Gumbel-Softmax) distribution on the probability simplex.

    Jang, Gu & Poole 2017; Maddison, Mnih & Teh 2017. A sample is
    ``x = softmax((logits + G) / temperature)`` with ``G`` standard Gumbel noise;
    ``argmax x`` is exactly ``Categorical(logits=logits)``-distributed at every
    temperature, and ``x`` tends to that one-hot vector as the temperature goes to 0.

    Sampling goes through log space: ``x = exp(y)`` for the :class:`ExpConcrete` sample
    ``y``. At low temperature most components of ``exp(y)`` underflow (at ``τ = 0.1,
    K = 100`` in float32, in every sample): torch's ``RelaxedOneHotCategorical`` returns
    exact ``0.0`` there and its ``log_prob`` is NaN. Here components below the smallest
    normal float ``tiny`` are returned as ``tiny`` (an absolute change below ``1.2e-38``
    in float32, and it spares CPU ``exp`` a 100x slow path), and ``log_prob`` is computed
    from ``y``, never from ``log x``: for the distribution's own most recent sample (the
    same tensor, unmodified) the distribution still holds ``y`` and evaluates
    ``log p_Y(y) - Σ_k y_k`` exactly, with exact gradients. Any other value ``x`` is
    scored as ``log p_Y(log x) - Σ log x`` with exact zeros read as the smallest subnormal
    float: finite, and exact wherever ``x`` is above ``tiny``. To score values whose
    components underflow accurately, keep them in log space with :class:`ExpConcrete`.

    The density is with respect to Lebesgue measure on the first ``K - 1`` coordinates.

    Args:
        temperature (float or Tensor): positive temperature, one per batch element
            (broadcasting rule as in :class:`ExpConcrete`). May require grad.
        logits (Tensor): ``(..., K)`` unnormalised log-probabilities (finite).
        probs (Tensor): ``(..., K)`` strictly positive probabilities summing to one.
        validate_args (bool, optional): whether to validate arguments and values.

    Example::

        >>> d = Concrete(torch.tensor(0.5, requires_grad=True), logits=torch.randn(3))
        >>> x = d.rsample((1000,))       # (1000, 3) points of the simplex
        >>> d.log_prob(x).mean().backward()
    """

    support = constraints.simplex

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        log_value, value, noise_log_density = self._draw(sample_shape)
        return self._remember(value, log_value, noise_log_density)

    def log_prob(self, value: Tensor) -> Tensor:
        own = self._recall(value)
        if own is not None:
            return self._own_log_prob(own) - own.log_value.sum(-1)
        if self._validate_args:
            self._validate_sample(value)
        return ops.concrete_log_density(value, self.logits, self.temperature)


GumbelSoftmax = Concrete
