"""The test suite's device option (``--device`` / ``PYRO_CONCRETE_DEVICE``, tests/devices.py).

The rules are tested directly; one run of pytest in a subprocess checks what a user sees when
the device asked for is not there: every test skipped with the reason, exit status 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import devices
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def test_the_cpu_is_the_default():
    for environ in ({}, {devices.ENV: ""}, {devices.ENV: "  "}):
        choice = devices.choose(None, environ)
        assert choice.device == torch.device("cpu") and choice.is_cpu and choice.unavailable is None


def test_the_option_wins_over_the_environment_variable():
    choice = devices.choose("cpu", {devices.ENV: "cuda"})
    assert choice.is_cpu and choice.named == "--device cpu"
    choice = devices.choose(None, {devices.ENV: "cuda:1"})
    assert choice.device == torch.device("cuda:1") and choice.named == f"{devices.ENV}=cuda:1"


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cpu:-1:2"])
def test_a_string_that_is_no_device_is_a_usage_error(spec):
    with pytest.raises(ValueError, match=f"--device {spec}: not a torch device"):
        devices.choose(spec, {})
    with pytest.raises(ValueError, match=f"{devices.ENV}={spec}: not a torch device"):
        devices.choose(None, {devices.ENV: spec})


def test_meta_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="meta tensors have shapes but no values"):
        devices.choose("meta", {})


def test_an_absent_accelerator_is_named_in_the_reason():
    named = f"{devices.ENV}=cuda"
    reason = devices.unavailable_reason(torch.device("cuda"), named)
    if torch.cuda.is_available():
        assert reason is None
        count = torch.cuda.device_count()
        assert devices.unavailable_reason(torch.device("cuda", count), named) == (
            f"{named} but torch.cuda.device_count() is {count}"
        )
    else:
        assert reason == f"{named} but torch.cuda.is_available() is False"
    assert devices.unavailable_reason(torch.device("cpu"), "--device cpu") is None


def test_cpu_only_tests():
    assert devices.cpu_only_reason("test_docs.py", True, None) == devices.CPU_ONLY_FILES["test_docs.py"]
    assert devices.cpu_only_reason("README.md", False, None) == devices.DOC_EXAMPLES
    assert devices.cpu_only_reason("test_kl.py", True, None) is None
    assert devices.cpu_only_reason("test_kl.py", True, "times a call") == "times a call"


def test_the_run_device_is_the_default_device(device):
    """The ``device`` fixture and ``torch.get_default_device()`` agree (the CPU by default)."""
    assert torch.get_default_device() == torch.zeros(()).device
    assert torch.zeros(()).device.type == device.type


@pytest.mark.slow
def test_an_unavailable_device_skips_every_test_and_exits_0():
    """What ``PYRO_CONCRETE_DEVICE=cuda python -m pytest`` does on a machine without a GPU (on
    one with GPUs: a CUDA index past the last)."""
    spec = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    reason = devices.unavailable_reason(torch.device(spec), f"{devices.ENV}={spec}")
    assert reason is not None
    environ = {**os.environ, devices.ENV: spec}
    this_file = str(Path(__file__).resolve().relative_to(ROOT))  # the lightest to import: torch, not pyro
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", this_file]
    run = subprocess.run(command, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = run.stdout.strip().splitlines()[-1]
    assert " skipped" in summary and "passed" not in summary and "failed" not in summary, summary
    assert reason in run.stdout
