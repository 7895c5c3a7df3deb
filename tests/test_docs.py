"""The documentation builds, and the examples of the README and the docs are collected.

The examples themselves (README and docs code blocks, docstring doctests) are collected
and run by Sybil from the repository's root ``conftest.py``; these tests check what the
collection cannot: that Sphinx builds the site offline with warnings as errors, that the
README stays a front page, and that CI runs the README's test command.
"""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"

DOCS_EXTRA = "pip install -e '.[docs]'"


def _missing(*modules: str) -> list[str]:
    return [name for name in modules if importlib.util.find_spec(name) is None]


def test_examples_are_collected(request):
    """Without Sybil, the README, docs and docstring examples are silently not run: say so."""
    missing = _missing("sybil")
    if missing:
        pytest.skip(f"sybil is not installed ({DOCS_EXTRA}): README, docs, docstring examples not run")
    root_conftests = [
        plugin
        for plugin in request.config.pluginmanager.get_plugins()
        if Path(getattr(plugin, "__file__", "") or "").resolve() == ROOT / "conftest.py"
    ]
    assert root_conftests, "the root conftest.py, which configures Sybil, was not loaded"
    assert callable(getattr(root_conftests[0], "pytest_collect_file", None))


@pytest.mark.skipif(not (DOCS / "conf.py").exists(), reason="docs/ is not part of this copy of the project")
def test_docs_build_without_warnings(tmp_path):
    missing = _missing("sphinx", "myst_nb", "furo")
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed ({DOCS_EXTRA}): the docs build is not tested")
    out = tmp_path / "html"
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
        + ["-d", str(tmp_path / "doctrees"), str(DOCS), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"sphinx failed:\n{result.stdout}\n{result.stderr}"
    for page in ("index", "contracts", "api/ops", "tutorials/01_concrete_distribution"):
        assert (out / f"{page}.html").exists(), page


@pytest.mark.skipif(not README.exists(), reason="no README in this copy of the project")
def test_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines: move detail into docs/"


def _readme_test_command() -> str:
    text = README.read_text(encoding="utf-8")
    commands = re.findall(r"^(pip install -e '\.\[test\]' && python -m pytest.*)$", text, re.MULTILINE)
    assert commands, "README.md names no test command"
    assert len(set(commands)) == 1, f"README.md names different test commands: {commands}"
    return commands[0]


@pytest.mark.skipif(not (ROOT / ".ci" / "run").exists(), reason="no .ci/run in this copy of the project")
def test_ci_runs_the_readme_test_command():
    """CI runs the README's pytest invocation itself (after installing at least the test extra)."""
    pytest_part = _readme_test_command().split("&&")[-1].strip()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    runs = [line.strip() for line in ci.splitlines() if not line.lstrip().startswith(("#", "echo"))]
    assert any(line.startswith(pytest_part) for line in runs), f".ci/run does not run {pytest_part!r}"
