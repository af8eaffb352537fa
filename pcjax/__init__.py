"""pcjax: a JAX inference engine for LLMs built around prefix caching.

Public API::

    from pcjax import Engine, SamplingParams
    engine = Engine(model="pcjax-small")
    outputs = engine.generate(["Hello"], SamplingParams(max_tokens=16))

The names are imported lazily so that host-only modules (``pcjax.cache``, ``pcjax.sim``) can be used
without importing jax.
"""

import importlib

__all__ = ["Engine", "EngineConfig", "SamplingParams", "RequestOutput"]

_LOCATIONS = {
    "Engine": "pcjax.engine.engine",
    "EngineConfig": "pcjax.config",
    "SamplingParams": "pcjax.sampling",
    "RequestOutput": "pcjax.engine.outputs",
}


def __getattr__(name: str):
    if name in _LOCATIONS:
        return getattr(importlib.import_module(_LOCATIONS[name]), name)
    raise AttributeError(f"module 'pcjax' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
