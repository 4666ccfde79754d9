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


async def _interrupt(kernel_manager) -> None:
    await kernel_manager.interrupt_kernel()  # nbclient's manager is asynchronous


def test_interrupting_a_notebook_cell_leaves_a_resumable_run(tmp_path, monkeypatch):
    """The kernel's interrupt (what Jupyter's stop button sends: SIGINT) during a map."""
    import asyncio
    import threading
    import time

    from nbformat.v4 import new_code_cell, new_notebook
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    calls = tmp_path / "calls"
    calls.mkdir()
    notebook = new_notebook(cells=[
        new_code_cell(f"import os, time, uuid\nimport stepmap\nCALLS = {str(calls)!r}\n"
                      "def slow(x):\n"
                      "    open(os.path.join(CALLS, f'{x}-{uuid.uuid4().hex}'), 'w').close()\n"
                      "    time.sleep(0.3)\n    return x + 1"),
        new_code_cell("stepmap.map(slow, range(40), workers=2, batch_size=1, run_id='nb')"),
        new_code_cell("sum(stepmap.map(slow, range(40), workers=2, batch_size=1, run_id='nb'))"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    client = NotebookClient(notebook, timeout=300, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(tmp_path)}})

    def interrupt_when_running():
        deadline = time.monotonic() + 120
        while len(list(calls.iterdir())) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        asyncio.run(_interrupt(client.km))

    watcher = threading.Thread(target=interrupt_when_running, daemon=True)
    watcher.start()
    client.execute()
    watcher.join()
    errors = [o for o in notebook.cells[1].outputs if o.output_type == "error"]
    assert errors and errors[0]["ename"] == "KeyboardInterrupt"
    assert "run_id='nb'" in errors[0]["evalue"]
    result = [o["data"]["text/plain"] for o in notebook.cells[2].outputs
              if o.output_type == "execute_result"]
    assert result == [str(sum(range(1, 41)))]
    record = json.loads((tmp_path / "stepmap-runs" / "nb" / "run.json").read_text())
    assert record["status"] == "SUCCEEDED" and len(record["attempts"]) == 2
    first = record["attempts"][1]["already_done"]
    assert 0 < first < 40  # the interrupted attempt's finished items were kept
    counts: dict = {}
    for path in calls.iterdir():
        counts[int(path.name.split("-")[0])] = counts.get(int(path.name.split("-")[0]), 0) + 1
    assert set(counts) == set(range(40)) and sum(counts.values()) <= 40 + 4
