"""Sphinx configuration of the pyro_concrete documentation.

Build (offline; warnings are errors in the test suite, ``tests/test_docs.py``)::

    pip install -e '.[docs]'
    python -m sphinx -W --keep-going -b html docs docs/_build/html

The tutorials are the notebooks of ``notebooks/``, copied into ``docs/tutorials/`` at the
start of every build and rendered by MyST-NB as they are stored, without executing them
(the test suite executes them, ``tests/test_notebooks.py``). No extension fetches anything
from the network: intersphinx is not used.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyro_concrete

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

project = "pyro_concrete"
author = "pyro_concrete contributors"
copyright = "the pyro_concrete contributors"
version = release = pyro_concrete.__version__

extensions = [
    "myst_nb",  # Markdown pages (MyST) and the notebooks
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # the package's Google-style docstrings
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
root_doc = "index"

# MyST: $...$ math (the notebooks use it), anchors for links to sections of a page.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

# MyST-NB: render the notebooks as stored (without outputs); never execute them here.
nb_execution_mode = "off"

# autodoc / napoleon
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_default_options = {"members": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

html_theme = "furo"
html_title = f"pyro_concrete {release}"

NOTEBOOKS = ROOT / "notebooks"
TUTORIALS = DOCS / "tutorials"


def _copy_notebooks(app) -> None:
    """Bring the notebooks into the source tree (Sphinx reads only files under ``docs/``);
    a copy is rewritten only when it differs, so unchanged notebooks are not re-read."""
    for source in sorted(NOTEBOOKS.glob("*.ipynb")):
        target = TUTORIALS / source.name
        if not target.exists() or target.read_bytes() != source.read_bytes():
            shutil.copyfile(source, target)


def setup(app) -> None:
    app.connect("builder-inited", _copy_notebooks)
