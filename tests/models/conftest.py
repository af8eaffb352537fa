"""Shared fixtures of the model tests: the golden checkpoints and their references."""

import functools
from pathlib import Path

import numpy as np
import pytest

from pcjax import models

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


@functools.cache
def golden_model(name: str, dtype: str = "float32") -> models.LoadedModel:
    """Loads tests/golden/<name> once per test session."""
    return models.load(GOLDEN / name, dtype)


@functools.cache
def golden_reference(name: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / name / "reference.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="session")
def tiny() -> models.LoadedModel:
    return models.load("pcjax-tiny")
