"""Sizing the engine from its config and model, and building the host cache parts."""

import dataclasses

from pcjax.cache import kv_pages
from pcjax.cache.null_cache import NullCache
from pcjax.cache.page_pool import PagePool
from pcjax.cache.policies import make_policy
from pcjax.cache.radix_tree import RadixTree
from pcjax.config import EngineConfig

DEFAULT_KV_CACHE_GB = 1.0
DEFAULT_MAX_MODEL_LEN_CAP = 4096


@dataclasses.dataclass(frozen=True)
class EngineLimits:
    """Sizes derived from the config and the model (see `EngineConfig` for the defaults)."""

    max_model_len: int
    max_num_batched_tokens: int
    num_pages: int  # NP, the null page included
    max_pages_per_seq: int


def resolve_limits(cfg: EngineConfig, model_config) -> EngineLimits:
    """Fills in the config's None sizes and checks that one full-length sequence fits."""
    max_model_len = cfg.max_model_len or min(
        model_config.max_position_embeddings, DEFAULT_MAX_MODEL_LEN_CAP
    )
    if max_model_len > model_config.max_position_embeddings:
        raise ValueError(
            f"max_model_len {max_model_len} exceeds the model's "
            f"max_position_embeddings {model_config.max_position_embeddings}"
        )
    max_pages_per_seq = -(-max_model_len // cfg.page_size)
    num_pages = cfg.num_pages or _pages_from_budget(cfg, model_config, max_pages_per_seq)
    if num_pages - 1 < max_pages_per_seq:
        raise ValueError(
            f"a KV cache of {num_pages} pages (page 0 is the null page) cannot hold "
            f"one sequence of max_model_len={max_model_len} tokens, which needs "
            f"{max_pages_per_seq} pages of {cfg.page_size}"
        )
    batched = cfg.max_num_batched_tokens or max(2048, cfg.max_num_seqs)
    if batched < cfg.max_num_seqs:
        raise ValueError(
            f"max_num_batched_tokens ({batched}) must be >= max_num_seqs "
            f"({cfg.max_num_seqs}) so every running sequence can decode each step"
        )
    return EngineLimits(max_model_len, batched, num_pages, max_pages_per_seq)


def _page_bytes(cfg: EngineConfig, model_config) -> int:
    return kv_pages.page_bytes(
        model_config.num_layers,
        cfg.page_size,
        model_config.num_kv_heads,
        model_config.head_dim,
        cfg.dtype,
    )


def _pages_from_budget(cfg: EngineConfig, model_config, max_pages_per_seq: int) -> int:
    page_bytes = _page_bytes(cfg, model_config)
    if cfg.kv_cache_memory_gb is not None:
        return int(cfg.kv_cache_memory_gb * 1e9 // page_bytes)
    budget = int(DEFAULT_KV_CACHE_GB * 1e9 // page_bytes)
    wanted = 2 * cfg.max_num_seqs * max_pages_per_seq + 1
    return max(min(budget, wanted), max_pages_per_seq + 1)


def build_cache_components(cfg: EngineConfig, num_pages: int, model_config=None):
    """The page pool and the prefix cache (a `NullCache` when caching is off).

    With ``swap_space > 0`` (and caching on) the tree gets a host tier of
    ``floor(swap_space * 1e9 / page_bytes)`` slots, the unused slot 0 included, so the host store
    never holds more than ``swap_space`` GB (``model_config`` gives the page size in bytes).
    """
    pool = PagePool(num_pages, track_freed=cfg.debug)
    if not cfg.enable_prefix_caching:
        return pool, NullCache(cfg.page_size)
    host_pool = None
    if cfg.swap_space > 0:
        if model_config is None:
            raise ValueError("a host tier (swap_space > 0) needs the model config to size pages")
        page_bytes = _page_bytes(cfg, model_config)
        num_slots = int(cfg.swap_space * 1e9 // page_bytes)
        if num_slots < 2:
            raise ValueError(
                f"swap_space={cfg.swap_space} GB cannot hold one page of {page_bytes} bytes "
                "(plus the unused slot 0)"
            )
        host_pool = PagePool(num_slots, track_freed=cfg.debug)
    tree = RadixTree(
        pool,
        cfg.page_size,
        make_policy(cfg.eviction_policy),
        host_pool=host_pool,
        write_through=host_pool is not None and cfg.write_policy == "write_through",
    )
    return pool, tree
