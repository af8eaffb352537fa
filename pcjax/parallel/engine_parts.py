"""What an `Engine` on a mesh is built from: the mesh, the limits, the replicas' host parts and
the sharded runner (`build_parts`)."""

import contextlib
from typing import NamedTuple

import jax

from pcjax.cache import kv_pages
from pcjax.config import EngineConfig
from pcjax.engine.components import EngineLimits, build_cache_components, resolve_limits
from pcjax.engine.kv_manager import KVManager
from pcjax.engine.scheduler import Scheduler
from pcjax.parallel.dispatch import ReplicaKV, ReplicaScheduler
from pcjax.parallel.layout import tensor_layout
from pcjax.parallel.mesh import check_mesh, make_mesh
from pcjax.parallel.runner import ShardedRunner
from pcjax.parallel.transfers import ReplicaTransfers


class ParallelParts(NamedTuple):
    """The parts `Engine` keeps (one replica: the plain scheduler and KVManager)."""

    limits: EngineLimits
    kv: object  # KVManager, or ReplicaKV over several replicas
    scheduler: object  # Scheduler, or ReplicaScheduler
    runner: ShardedRunner


def resolve_mesh(cfg: EngineConfig, mesh=None):
    """The engine's mesh: ``mesh`` checked against the config, else a new one when D * T > 1 or
    several processes run; None for the plain single-device engine.

    Raises:
      ValueError: a mesh that does not match the config, too few devices, or (several
        processes) a mesh that would leave some of the processes' devices out.
    """
    d, t = cfg.data_parallel_size, cfg.tensor_parallel_size
    if mesh is not None:
        check_mesh(mesh, d, t)
        return mesh
    if d * t == 1 and jax.process_count() == 1:
        return None
    if jax.process_count() > 1 and d * t != jax.device_count():
        raise ValueError(
            f"with {jax.process_count()} processes the mesh must use all {jax.device_count()} "
            f"devices; data_parallel_size x tensor_parallel_size is {d * t}"
        )
    return make_mesh(d, t)


def loading_device(mesh):
    """Where to load the weights before they are split: host memory (the CPU backend) for a
    mesh, so a model larger than one device never lands whole on one; else the default."""
    if mesh is None:
        return contextlib.nullcontext()
    try:
        cpu = jax.local_devices(backend="cpu")[0]
    except RuntimeError:  # no CPU backend in this process
        return contextlib.nullcontext()
    return jax.default_device(cpu)


def build_parts(cfg: EngineConfig, model, mesh, attention_impl: str) -> ParallelParts:
    """Builds D replicas' schedulers and page managers and the runner over ``mesh``.

    Sizes come from one device's share of the model (`TensorLayout.local_config`): page and
    memory budgets are per replica (``num_pages``) and per device (``kv_cache_memory_gb``,
    ``swap_space``).
    """
    layout = tensor_layout(model.config, mesh.shape["model"])
    local = layout.local_config
    limits = resolve_limits(cfg, local)
    kvs, schedulers = [], []
    for _ in range(mesh.shape["data"]):
        pool, cache = build_cache_components(cfg, limits.num_pages, local)
        kv = KVManager(pool, cache, cfg.page_size, caching=cfg.enable_prefix_caching)
        kvs.append(kv)
        schedulers.append(Scheduler.from_config(kv, cfg, limits.max_num_batched_tokens))
    host_pool = kvs[0].cache.host_pool
    runner = ShardedRunner(
        model,
        layout,
        mesh,
        attention_impl,
        num_pages=limits.num_pages,
        page_size=cfg.page_size,
        num_host_slots=host_pool.num_pages if host_pool is not None else 0,
        debug=cfg.debug,
    )
    mc = model.config
    page_bytes = kv_pages.page_bytes(
        mc.num_layers, cfg.page_size, layout.num_stored_kv_heads, mc.head_dim, cfg.dtype
    )
    for r, kv in enumerate(kvs):
        kv.transfer = ReplicaTransfers(
            runner, r, kv.pool, kv.cache.host_pool, page_bytes, cfg.debug
        )
    if len(kvs) == 1:
        return ParallelParts(limits, kvs[0], schedulers[0], runner)
    scheduler = ReplicaScheduler(schedulers)
    return ParallelParts(limits, ReplicaKV(kvs, scheduler), scheduler, runner)
