"""Suite-wide pytest hooks: tests marked `accelerator` skip, saying why, without a GPU or TPU."""

import jax
import pytest


def pytest_collection_modifyitems(config, items):
    del config
    backend = jax.default_backend()
    if backend in ("gpu", "cuda", "rocm", "tpu"):
        return
    skip = pytest.mark.skip(reason=f"needs a GPU or TPU; jax's backend here is {backend!r}")
    for item in items:
        if "accelerator" in item.keywords:
            item.add_marker(skip)
