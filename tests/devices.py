"""The torch device the test suite runs on (the hooks that apply it are in the root conftest.py).

``python -m pytest --device cuda`` or ``PYRO_CONCRETE_DEVICE=cuda python -m pytest`` runs the
suite with ``torch.set_default_device(device)`` for the whole session: every tensor a test or
a test module makes without ``device=`` is made there, the library computes there, and a
test that must name a device uses ``torch.get_default_device()`` (or the ``device`` fixture).
``--device`` wins over the environment variable; without either the device is the CPU and
nothing is changed. See docs/testing.md.

This module only decides; it has no pytest hooks, so that its rules can be tested directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

ENV = "PYRO_CONCRETE_DEVICE"
OPTION = "--device"


@dataclass(frozen=True)
class DeviceChoice:
    """The device of a run, where the choice came from, and why it cannot be used (if so)."""

    device: torch.device
    named: str  # how the user asked for it: "--device cuda", "PYRO_CONCRETE_DEVICE=cuda", "default"
    unavailable: str | None = None  # the skip reason of every device test; None: usable

    @property
    def is_cpu(self) -> bool:
        return self.device.type == "cpu"


def choose(option: str | None, environ: Mapping[str, str]) -> DeviceChoice:
    """The run's device: the ``--device`` option, else ``$PYRO_CONCRETE_DEVICE`` (an empty
    value counts as unset), else the CPU.

    Raises:
        ValueError: a string torch does not read as a device, or ``meta`` (a usage error).
    """
    if option:
        spec, named = option, f"{OPTION} {option}"
    elif environ.get(ENV, "").strip():
        spec = environ[ENV].strip()
        named = f"{ENV}={spec}"
    else:
        return DeviceChoice(torch.device("cpu"), "default")
    try:
        device = torch.device(spec)
    except RuntimeError as error:
        raise ValueError(f"{named}: not a torch device ({error})") from None
    if device.type == "meta":
        raise ValueError(
            f"{named}: meta tensors have shapes but no values, so the suite's checks cannot run on "
            "them; the meta-device contracts run in every run (tests/test_contracts.py, 'devices')"
        )
    return DeviceChoice(device, named, unavailable_reason(device, named))


def unavailable_reason(device: torch.device, named: str) -> str | None:
    """Why ``device`` cannot be used in this process (None if it can): the skip reason of the
    run's device tests, e.g. ``"PYRO_CONCRETE_DEVICE=cuda but torch.cuda.is_available() is
    False"``."""
    if device.type == "cpu":
        return None
    if device.type == "cuda":  # also ROCm builds, whose torch.cuda drives HIP
        if not torch.cuda.is_available():
            return f"{named} but torch.cuda.is_available() is False"
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            return f"{named} but torch.cuda.device_count() is {count}"
        return None
    if device.type == "mps" and not torch.backends.mps.is_available():
        return f"{named} but torch.backends.mps.is_available() is False"
    is_available = getattr(getattr(torch, device.type, None), "is_available", None)
    if callable(is_available) and not is_available():
        return f"{named} but torch.{device.type}.is_available() is False"
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as error:  # an unbuilt backend raises either
        return f"{named} but no tensor can be made there ({error})"
    return None


# Tests that run in the default (CPU) run only. Under another device they are skipped with
# this reason, never run on the CPU in its place. A single test says so with
# @pytest.mark.cpu_only(reason="...").
CPU_ONLY_FILES = {
    "test_docs.py": "the documentation build makes no tensor",
    "test_notebooks.py": "the notebooks run in kernels of their own, on the CPU",
    "test_demo.py": "the demo has no device option: it trains on the CPU",
}
DOC_EXAMPLES = "a documentation example shows the printed output of CPU tensors"


def cpu_only_reason(path_name: str, in_tests: bool, marker_reason: str | None) -> str | None:
    """Why a test runs on the CPU only (None: it runs on the run's device).

    Args:
        path_name: the name of the test's file.
        in_tests: whether the file is under ``tests/`` (the others hold documentation examples).
        marker_reason: the reason of its ``cpu_only`` marker, if it has one.
    """
    if marker_reason is not None:
        return marker_reason
    if not in_tests:
        return DOC_EXAMPLES
    return CPU_ONLY_FILES.get(path_name)
