"""The example notebook, executed by a real IPython kernel (nbclient + ipykernel), outputs
checked: results, a progress widget (tqdm's auto mode), the inline timeline, failures."""

import json
import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "library.ipynb"


def test_committed_notebook_is_small_and_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert NOTEBOOK.stat().st_size < 20 * 1024
    assert all(not cell.get("outputs") and not cell.get("execution_count")
               for cell in notebook.cells if cell.cell_type == "code")


def test_notebook_runs_on_a_real_kernel(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))  # the kernel inherits it
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    for cell in code:
        assert not [o for o in cell.outputs if o.output_type == "error"], cell.outputs

    def data(cell, kind):
        return [o["data"][kind] for o in cell.outputs if kind in o.get("data", {})]

    assert data(code[1], "text/plain")[-1] == str([x * x for x in range(10)])
    assert data(code[1], "application/vnd.jupyter.widget-view+json")  # the progress bar
    assert data(code[2], "text/plain")[-1] == str([21 ** 3, 22 ** 3, 23 ** 3])
    png = data(code[3], "image/png")
    assert png and len(png[0]) > 1000  # the timeline, inline (base64 PNG)
    failed = data(code[4], "text/plain")[-1]
    assert failed.startswith("([2],") and "ZeroDivisionError('item 2 (2) failed after 1 " \
        "attempt(s): ZeroDivisionError: integer division or modulo by zero')" in failed
    records = [json.loads(p.read_text()) for p in (tmp_path / "stepmap-runs").glob("*/run.json")]
    assert len(records) == 3 and {r["status"] for r in records} == {"SUCCEEDED", "INCOMPLETE"}
    # inside a kernel (which runs threads), forking is not safe: the API asks for forkserver
    assert {r["settings"]["engine_options"]["start_method"] for r in records} == {"forkserver"}
