"""The eviction notebook runs headless on a small results file, so it cannot rot."""

import os
import subprocess
import sys

import nbclient
import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOK = os.path.join(ROOT, "notebooks", "eviction_policies.ipynb")
SMALL = ["--num_requests=150", "--block_tokens=64", "--capacities_tokens=2000,8000"]


def compare_eviction(workdir, *args):
    cmd = [sys.executable, "-m", "experiments.compare_eviction", f"--workdir={workdir}", *args]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("results")
    compare_eviction(workdir, "--trace=chat,few_shot", *SMALL)
    compare_eviction(
        workdir,
        "--trace=chat",
        "--mode=two_tier",
        "--host_capacity_tokens=8000",
        "--policies=lru,deadline,belady,infinite",
        *SMALL,
    )
    return workdir


def test_notebook_is_committed_with_its_outputs_on_the_committed_results():
    """Opened as committed, it shows its plots, drawn from experiments/results."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    outputs = [o for c in code for o in c.outputs]
    assert code and all(c.execution_count is not None for c in code)
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4, "sequential, two-tier, timed and engine figures"
    text = "".join(o.get("text", "") for o in outputs)
    assert "results from experiments/results" in text
    assert "no " + "two_tier rows" not in text and "no engine rows" not in text
    assert "worst vs LRU" in text and "adaptive" in text  # the robustness table


def test_notebook_executes_on_a_small_results_file(results, tmp_path, monkeypatch):
    empty = tmp_path / "no_fresh_results"
    empty.mkdir()
    figures = tmp_path / "figures"
    monkeypatch.setenv("PCJAX_EVICTION_RESULTS", os.pathsep.join([str(empty), str(results)]))
    monkeypatch.setenv("PCJAX_EVICTION_FIGURES", str(figures))
    monkeypatch.setenv("PCJAX_REPO", ROOT)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert f"results from {os.path.relpath(results, ROOT)}" in text, "the empty folder is skipped"
    assert "chat (sequential): token hit rate / Belady's" in text
    assert "few_shot (sequential)" in text
    assert sorted(os.listdir(figures)) == ["hit_rate_sequential.png", "two_tier.png"]
