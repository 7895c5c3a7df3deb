"""Collects every example of the project as a test, with Sybil (https://sybil.readthedocs.io).

- the ``>>>`` examples in the docstrings of ``pyro_concrete/`` (run as doctests: their
  printed output is compared);
- every fenced ```` ```python ```` block of ``README.md`` and of the pages under ``docs/``
  (run as code: a block raises or it passes; a block made of ``>>>`` lines is a doctest).

Each file is one namespace: its examples run in order, and a later block may use names an
earlier block of the same file defined. The namespace starts with ``torch``, ``pyro``,
``dist`` (``pyro.distributions``) and ``pc`` (``pyro_concrete``), a fixed seed, an empty Pyro
parameter store and torch's default validation on; a docstring example also sees the globals
of its module. Sybil is installed by the ``docs`` extra; without it nothing here is collected
and ``tests/test_docs.py`` says so in a skip.

It also owns the run's torch device (``--device`` or ``PYRO_CONCRETE_DEVICE``; the rules are in
``tests/devices.py``): under a device other than the CPU the whole session runs with
``torch.set_default_device(device)``, the CPU-only tests (these examples among them) are
skipped with their reason, and every test is skipped, with the reason, where the device is
not available.
"""

from __future__ import annotations

import doctest
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "tests"))
import devices  # tests/devices.py

try:
    from sybil import Sybil
    from sybil.parsers.markdown import PythonCodeBlockParser as MarkdownPythonParser
    from sybil.parsers.markdown import SkipParser as MarkdownSkipParser
    from sybil.parsers.myst import PythonCodeBlockParser as MystPythonParser
    from sybil.parsers.myst import SkipParser as MystSkipParser
    from sybil.parsers.rest import DocTestParser
    from sybil.sybil import SybilCollection
except ImportError:  # pragma: no cover - depends on the environment
    Sybil = None

OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _setup(namespace: dict) -> None:
    import pyro
    import pyro.distributions as dist
    import torch

    import pyro_concrete as pc

    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    namespace["_previous_validation"] = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(True)
    namespace.update(torch=torch, pyro=pyro, dist=dist, pc=pc)


def _teardown(namespace: dict) -> None:
    import pyro
    import torch

    torch.distributions.Distribution.set_default_validate_args(namespace["_previous_validation"])
    pyro.clear_param_store()


if Sybil is not None:
    _docstrings = Sybil(
        parsers=[DocTestParser(optionflags=OPTIONFLAGS)],
        patterns=["*.py"],
        path="pyro_concrete",
        setup=_setup,
        teardown=_teardown,
    )
    _readme = Sybil(
        parsers=[MarkdownPythonParser(doctest_optionflags=OPTIONFLAGS), MarkdownSkipParser()],
        filenames=["README.md"],
        setup=_setup,
        teardown=_teardown,
    )
    _pages = Sybil(
        parsers=[MystPythonParser(doctest_optionflags=OPTIONFLAGS), MystSkipParser()],
        patterns=["*.md"],
        excludes=["_build/*"],
        path="docs",
        setup=_setup,
        teardown=_teardown,
    )
    pytest_collect_file = SybilCollection([_docstrings, _readme, _pages]).pytest()


# -- the run's device ---------------------------------------------------------------------------

_DEVICE = pytest.StashKey[devices.DeviceChoice]()
_TESTS = Path(__file__).parent / "tests"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        devices.OPTION,
        default=None,
        metavar="DEVICE",
        help=f"run the tests on this torch device (cuda, cuda:1, mps, ...); default: ${devices.ENV}, "
        "else the CPU. CPU-only tests are skipped; every test is skipped if the device is not available.",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "cpu_only(reason): runs in the default CPU run only; skipped, with the reason, under another device",
    )
    try:
        choice = devices.choose(config.getoption("device"), os.environ)
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None
    config.stash[_DEVICE] = choice
    if not choice.is_cpu and choice.unavailable is None:
        # Before any test module is imported: module-level tensors are made there too.
        torch.set_default_device(choice.device)


def pytest_unconfigure(config: pytest.Config) -> None:
    choice = config.stash.get(_DEVICE, None)
    if choice is not None and not choice.is_cpu and choice.unavailable is None:
        torch.set_default_device(None)


def pytest_report_header(config: pytest.Config) -> str:
    choice = config.stash[_DEVICE]
    if choice.unavailable is not None:
        return f"device: {choice.named}: not available, every test is skipped"
    return f"device: {choice.device} ({choice.named})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    choice = config.stash[_DEVICE]
    if choice.is_cpu:
        return
    if choice.unavailable is not None:
        for item in items:
            item.add_marker(pytest.mark.skip(reason=choice.unavailable))
        return
    for item in items:
        marker = item.get_closest_marker("cpu_only")
        marked = None if marker is None else marker.kwargs.get("reason", next(iter(marker.args), "unstated"))
        reason = devices.cpu_only_reason(item.path.name, _TESTS in item.path.parents, marked)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"CPU only, skipped under {choice.named}: {reason}"))


@pytest.fixture
def device(pytestconfig: pytest.Config) -> torch.device:
    """The run's device (the CPU unless ``--device`` or ``PYRO_CONCRETE_DEVICE`` names another)."""
    return pytestconfig.stash[_DEVICE].device
