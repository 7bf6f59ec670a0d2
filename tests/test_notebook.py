"""notebooks/quickstart.ipynb runs top to bottom (nbclient, a fresh kernel), so it cannot rot."""
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_notebook_runs():
    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    points = next(c for c in nb.cells if "points[\"self-consistency\"]" in c.source).outputs[-1]
    assert "self-consistency" in points["data"]["text/plain"]
    assert any("image/png" in o.get("data", {}) for o in nb.cells[-2].outputs)    # the plot, shown inline
