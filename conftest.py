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
"""

from __future__ import annotations

import doctest

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
