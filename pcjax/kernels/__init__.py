"""Attention over the paged KV cache: the interface, the jnp reference, and the Pallas kernels."""

from pcjax.kernels.ragged_paged_attention import (
    AttentionMetadata,
    ref_ragged_paged_attention,
    write_kv,
)

__all__ = [
    "AttentionMetadata",
    "ragged_paged_attention",
    "ref_ragged_paged_attention",
    "resolve_attention_impl",
    "write_kv",
]


def resolve_attention_impl(name: str, platform: str) -> str:
    """Maps the engine's `attention_impl` ("auto", "pallas", "reference") to a concrete impl."""
    del platform  # only the reference exists so far
    if name in ("auto", "reference"):
        return "reference"
    raise ValueError(f"attention_impl {name!r} is not available")


def ragged_paged_attention(
    q, k_pages, v_pages, md, *, sm_scale, sliding_window=None, soft_cap=None, impl="reference"
):
    """Dispatches to one implementation of the ragged paged attention (see the interface module).

    Args:
      impl: "reference" (plain jnp). The Pallas kernels register further names.
    """
    if impl == "reference":
        return ref_ragged_paged_attention(
            q,
            k_pages,
            v_pages,
            md,
            sm_scale=sm_scale,
            sliding_window=sliding_window,
            soft_cap=soft_cap,
        )
    raise ValueError(f"unknown attention impl {impl!r}")
