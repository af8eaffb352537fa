"""Rotary position embeddings in the Hugging Face "rotate half" convention.

A head vector ``x = [x1, x2]`` (halves of H/2) at position p becomes
``[x1, x2] * cos(p * f) + [-x2, x1] * sin(p * f)`` with ``f = concat(inv_freq, inv_freq)``.
Checkpoints converted from Hugging Face already carry q/k weights permuted for this convention.
The angles are computed in float32 (as transformers does) and cast to the activation dtype.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np


def inverse_frequencies(head_dim: int, theta: float, scaling: dict | None = None) -> np.ndarray:
    """The H/2 rotation frequencies, f32; `scaling` holds llama3 parameters or is None.

    llama3 (Llama 3.1) keeps high frequencies (wavelength < orig / high_freq_factor), divides low
    ones (wavelength > orig / low_freq_factor) by `factor`, and interpolates in between.
    """
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (np.float32(1.0) / np.power(np.float32(theta), exponents)).astype(np.float32)
    if scaling is None:
        return inv_freq
    return _llama3(inv_freq, **scaling).astype(np.float32)


def _llama3(
    inv_freq, *, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings
):
    old_len = original_max_position_embeddings
    low_freq_wavelen = old_len / low_freq_factor
    high_freq_wavelen = old_len / high_freq_factor
    wavelen = (2 * math.pi / inv_freq).astype(np.float32)
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq).astype(np.float32)
    smooth = (old_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled)


def rope_cos_sin(
    positions: jax.Array,  # i32[T]
    inv_freq: np.ndarray,  # f32[H/2]
    dtype,
) -> tuple[jax.Array, jax.Array]:  # f[T, H] each
    """cos and sin of the angles ``positions * concat(inv_freq, inv_freq)``, cast to `dtype`.

    Computed once per step: the optimization barrier keeps XLA from fusing the cos/sin into each
    layer's rotations, where they were recomputed per layer and per head (for a 64-token prefill
    of smollm2-135m: 2.9M cos/sin evaluations instead of 8K).
    """
    angles = positions.astype(jnp.float32)[:, None] * jnp.asarray(inv_freq)[None, :]  # f32[T, H/2]
    angles = jnp.concatenate([angles, angles], axis=-1)  # f32[T, H]
    return jax.lax.optimization_barrier(
        (jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype))
    )


def apply_rope(
    x: jax.Array,  # f[T, heads, H]
    cos: jax.Array,  # f[T, H]
    sin: jax.Array,  # f[T, H]
) -> jax.Array:  # f[T, heads, H]
    """Rotates every head of every token by its position's angles."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]
