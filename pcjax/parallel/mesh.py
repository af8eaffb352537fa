"""The device mesh of a parallel engine: ``(D, T)`` devices with axes ``("data", "model")``.

``"data"`` indexes the D replicas (each its own KV pages, page pool and radix tree), ``"model"``
the T tensor-parallel shards of one replica (weights and KV heads, `pcjax.parallel.layout`).
Both axes are Auto (GSPMD) axes; the engine's step runs under ``jax.shard_map`` over both.
"""

import jax
import numpy as np

DATA_AXIS = "data"
MODEL_AXIS = "model"
AXES = (DATA_AXIS, MODEL_AXIS)


def make_mesh(data_parallel_size: int, tensor_parallel_size: int, devices=None):
    """A ``(D, T)`` mesh over ``devices`` (default: the first D * T of `jax.devices()`, which
    lists every process's devices, process by process).

    With several processes and the default devices, consecutive devices share a process, so the
    ``"model"`` axis stays inside a process when T divides its device count and the ``"data"``
    axis spans the processes; a mesh with T larger than a process's devices spans processes
    along ``"model"``.

    Raises:
      ValueError: fewer devices than D * T.
    """
    size = data_parallel_size * tensor_parallel_size
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) < size:
        raise ValueError(
            f"data_parallel_size {data_parallel_size} x tensor_parallel_size "
            f"{tensor_parallel_size} needs {size} devices; {len(devices)} are available "
            "(on CPU, set JAX_NUM_CPU_DEVICES before jax starts to simulate more)"
        )
    grid = np.asarray(devices[:size], dtype=object).reshape(data_parallel_size, -1)
    return jax.sharding.Mesh(grid, AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2)


def check_mesh(mesh, data_parallel_size: int, tensor_parallel_size: int) -> None:
    """Raises ValueError unless ``mesh`` has the engine's axes and sizes."""
    if tuple(mesh.axis_names) != AXES:
        raise ValueError(f"the mesh's axes must be {AXES}, got {tuple(mesh.axis_names)}")
    shape = (mesh.shape[DATA_AXIS], mesh.shape[MODEL_AXIS])
    if shape != (data_parallel_size, tensor_parallel_size):
        raise ValueError(
            f"the mesh is {shape} (data, model) but the config asks for "
            f"data_parallel_size={data_parallel_size}, tensor_parallel_size={tensor_parallel_size}"
        )
