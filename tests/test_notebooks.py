"""Every notebook in notebooks/ executes without error, at small sizes.

The notebooks run in a Jupyter kernel started from this interpreter (a kernelspec written to
a temporary folder and found through ``JUPYTER_PATH``), so they import the package under
test and not whatever another ``python3`` kernel would. ``PYRO_CONCRETE_SMALL=1`` tells
them to use small sizes; matplotlib uses the Agg backend (nothing is displayed).
"""

import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("ipykernel.kernelspec")
pytest.importorskip("matplotlib")

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
KERNEL_NAME = "pyro-concrete-tests"


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("jupyter")
    kernelspec.install(kernel_name=KERNEL_NAME, prefix=str(prefix), display_name="pyro_concrete tests")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"), prepend=":")
        mp.setenv("PYRO_CONCRETE_SMALL", "1")
        mp.setenv("MPLBACKEND", "Agg")
        mp.setenv("OMP_NUM_THREADS", "1")  # the kernel shares the test machine's cores
        from jupyter_client.kernelspec import KernelSpecManager

        assert KernelSpecManager().get_kernel_spec(KERNEL_NAME).argv[0] == sys.executable
        yield KERNEL_NAME


def test_notebooks_exist():
    names = [path.name for path in NOTEBOOKS]
    assert names == [
        "01_concrete_distribution.ipynb",
        "02_discrete_latents_in_pyro.ipynb",
        "03_estimators.ipynb",
        "04_subsets_and_permutations.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip the outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_executes(path, kernel_name, tmp_path):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name=kernel_name,
        timeout=300,
        resources={"metadata": {"path": str(tmp_path)}},
        shutdown_kernel="immediate",  # the outputs are in: kill the kernel, no shutdown handshake (~1 s)
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
