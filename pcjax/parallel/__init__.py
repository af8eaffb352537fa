"""Beyond one device: tensor and data parallelism on a jax Mesh, replica dispatch by prefix
affinity, and several processes (hosts) running one engine.

``Engine(tensor_parallel_size=T, data_parallel_size=D)`` runs on a ``(D, T)`` mesh with axes
``("data", "model")`` (`mesh`): weights and KV heads split over ``"model"`` (`layout`), D
replicas with their own pages and radix trees over ``"data"`` (`dispatch`, `replica_batch`),
one sharded step for all (`runner`), host tier per replica (`transfers`). Several processes:
`multihost` (``initialize``, ``follow``, ``stop_followers``) and the local launcher
(``python -m pcjax.parallel.launch``).
"""

from pcjax.parallel.engine_parts import ParallelParts, build_parts, loading_device, resolve_mesh
from pcjax.parallel.layout import TensorLayout, tensor_layout
from pcjax.parallel.mesh import AXES, DATA_AXIS, MODEL_AXIS, make_mesh
from pcjax.parallel.multihost import (
    follow,
    initialize,
    shutdown,
    stop_followers,
    use_cpu_devices,
)

__all__ = [
    "AXES",
    "DATA_AXIS",
    "MODEL_AXIS",
    "ParallelParts",
    "TensorLayout",
    "build_parts",
    "follow",
    "initialize",
    "loading_device",
    "make_mesh",
    "resolve_mesh",
    "shutdown",
    "stop_followers",
    "tensor_layout",
    "use_cpu_devices",
]
