"""Sharded engines give the single-device engine's greedy tokens (float32), on 8 simulated CPU
devices and across two processes; `experiments.check_parallel` runs them in subprocesses.

The workload has shared prefixes, prefix caching, a cache small enough to evict and preempt,
and a host tier; engines run in debug mode (page accounting checked on every replica after
every step, freed pages NaN-filled); a second round runs overlapped over the warm cache.
"""

import json
import sys

import pytest

from pcjax.parallel.launch import launch
from tests.parallel.conftest import cpu_env, run_module

MESHES = ["1x1", "1x2", "1x8", "2x4", "4x2", "8x1"]
WORKLOAD = ["--groups=2", "--per_group=3", "--max_tokens=5", "--num_pages=24", "--rounds=2"]


@pytest.fixture(scope="module")
def eight_devices(cpu_only, tmp_path_factory):
    """The JSON of every mesh on 8 simulated devices (it also holds the reference tokens)."""
    workdir = tmp_path_factory.mktemp("check_parallel")
    args = [f"--meshes={','.join(MESHES)}", f"--workdir={workdir}", *WORKLOAD]
    proc = run_module("experiments.check_parallel", *args, env=cpu_env(8), timeout=480)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(workdir / "check_parallel.json") as f:
        return json.load(f), workdir / "check_parallel.json", proc.stdout


def test_every_mesh_reproduces_the_single_device_tokens(eight_devices):
    result, _, stdout = eight_devices
    rows = {row["mesh"]: row for row in result["rows"]}
    assert list(rows) == MESHES
    for mesh, row in rows.items():
        assert row["identical"], f"mesh {mesh} differs:\n{stdout}"
    # the workload did what it is for: hits, evictions and host-tier traffic
    assert all(row["hit_rate"] > 0.3 for row in rows.values())
    assert sum(row["evicted_pages"] > 0 for row in rows.values()) >= 4
    assert sum(row["host_hit_tokens"] > 0 for row in rows.values()) >= 3
    assert all(sum(row["dispatched"]) == 12 for mesh, row in rows.items() if mesh[0] != "1")


def test_two_processes_give_the_same_tokens(eight_devices, tmp_path):
    """Process 0 leads, process 1 follows; mesh 2x4 spans the processes along "data" and mesh
    1x8 along "model"."""
    _, reference, _ = eight_devices
    command = [
        sys.executable,
        "-m",
        "experiments.check_parallel",
        "--meshes=2x4,1x8",
        f"--reference={reference}",
        f"--workdir={tmp_path}",
        *WORKLOAD,
    ]
    results = launch(
        command, 2, cpu_devices_per_process=4, log_dir=str(tmp_path), timeout=300, env=cpu_env()
    )
    logs = [(tmp_path / f"process_{r.process_id}.log").read_text()[-3000:] for r in results]
    assert [r.returncode for r in results] == [0, 0], "\n".join(logs)
    with open(tmp_path / "check_parallel.json") as f:
        result = json.load(f)
    assert result["processes"] == 2
    rows = {row["mesh"]: row for row in result["rows"]}
    assert rows["2x4"]["identical"] and rows["1x8"]["identical"], logs[0]
    assert rows["2x4"]["device_processes"] == [[0] * 4, [1] * 4]  # "data" spans the processes
    assert rows["1x8"]["device_processes"] == [[0] * 4 + [1] * 4]  # "model" spans them
