"""The demo's data: scikit-learn's 8x8 handwritten digits, binarised, with a fixed split.

The 1797 images ship inside scikit-learn (``sklearn.datasets.load_digits``): nothing is
downloaded. Pixel intensities run from 0 to 16; a pixel is ``1`` when its intensity is at
least ``THRESHOLD`` (8, half the range), about a third of all pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["IMAGE_SIDE", "SPLIT_SEED", "TEST_FRACTION", "THRESHOLD", "load_binarized_digits"]

IMAGE_SIDE = 8
THRESHOLD = 8.0
TEST_FRACTION = 0.2
SPLIT_SEED = 0  # the split never changes with the training seed


def load_binarized_digits(dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """The binarised digits, split into a training and a test set.

    Returns:
        tuple of Tensor: ``(train, test)``, shapes ``(1438, 64)`` and ``(359, 64)``, values
        ``0.0`` and ``1.0``. The split is a random permutation drawn with the fixed seed
        ``SPLIT_SEED``: the same on every call and every machine.

    Example::

        >>> train, test = load_binarized_digits()
        >>> train.shape, test.shape
        (torch.Size([1438, 64]), torch.Size([359, 64]))
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the demo needs scikit-learn: pip install 'pyro-concrete[demo]'") from e
    images = torch.as_tensor(load_digits().data)
    binary = (images >= THRESHOLD).to(dtype)
    order = torch.randperm(binary.shape[0], generator=torch.Generator().manual_seed(SPLIT_SEED))
    num_test = round(TEST_FRACTION * binary.shape[0])
    return binary[order[num_test:]].contiguous(), binary[order[:num_test]].contiguous()
