import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


def pytest_configure(config):
    # Deselect with `-m "not slow"` for a quick run; the default command runs them too.
    config.addinivalue_line(
        "markers", "slow: takes a second or more (SVI training, notebook execution, the demo)"
    )


# The tests are many small tensor operations: on a 2-core CI machine a second intra-op
# thread costs more in wake-ups than it saves, and one thread makes timings repeatable.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_validation():
    """Every test starts from a fixed seed with torch's default validation on."""
    torch.manual_seed(20170214)
    previous = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(True)
    yield
    torch.distributions.Distribution.set_default_validate_args(previous)
