"""Shared set-up of the parallel tests: engines on simulated CPU devices run in subprocesses
(the device count is fixed when jax starts), so the pytest process keeps its one device."""

import os
import subprocess
import sys

import jax
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cpu_env(num_devices: int | None = None) -> dict:
    """The environment of a subprocess on the CPU platform with ``num_devices`` devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    if num_devices is not None:
        env["JAX_NUM_CPU_DEVICES"] = str(num_devices)
    return env


def run_module(module: str, *args: str, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """Runs ``python -m module args...`` from the repository root, bounded in time."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def cpu_only():
    """Skips tests of simulated CPU devices on accelerator machines (the `accelerator` tests of
    this directory cover the real devices there)."""
    if jax.default_backend() != "cpu":
        pytest.skip("simulated CPU devices: run on CPU-only machines (accelerator tests run here)")
