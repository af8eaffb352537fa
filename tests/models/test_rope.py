"""RoPE: inverse frequencies (plain and llama3-scaled) against the direct formula."""

import math

import jax.numpy as jnp
import numpy as np

from pcjax.models.rope import apply_rope, inverse_frequencies, rope_cos_sin

LLAMA31 = dict(
    factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
)


def llama3_direct(
    head_dim, theta, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings
):
    """Meta's reference (llama-models apply_scaling), one frequency at a time, in float64."""
    out = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / theta ** (i / head_dim)
        wavelen = 2 * math.pi / freq
        low_wavelen = original_max_position_embeddings / low_freq_factor
        high_wavelen = original_max_position_embeddings / high_freq_factor
        if wavelen < high_wavelen:
            out.append(freq)
        elif wavelen > low_wavelen:
            out.append(freq / factor)
        else:
            smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (
                high_freq_factor - low_freq_factor
            )
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return np.array(out)


def test_default_frequencies():
    inv = inverse_frequencies(8, 10000.0)
    np.testing.assert_allclose(inv, [1.0, 0.1, 0.01, 0.001], rtol=1e-6)


def test_llama3_scaling_matches_direct_formula():
    inv = inverse_frequencies(128, 500000.0, LLAMA31)
    expected = llama3_direct(128, 500000.0, **LLAMA31)
    np.testing.assert_allclose(inv, expected, rtol=2e-6)
    plain = inverse_frequencies(128, 500000.0)
    # all three regimes occur: kept, smoothed and divided by the factor
    assert np.isclose(inv[0], plain[0]) and np.isclose(inv[-1], plain[-1] / 8, rtol=1e-6)
    assert ((inv < plain * 0.99) & (inv > plain / 8 * 1.01)).any()


def test_apply_rope_rotates_pairs_of_halves():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 2, 8)), jnp.float32)
    positions = jnp.array([0, 1, 5])
    inv = inverse_frequencies(8, 10000.0)
    cos, sin = rope_cos_sin(positions, inv, jnp.float32)
    out = np.asarray(apply_rope(x, cos, sin))
    np.testing.assert_allclose(out[0], x[0], rtol=1e-6)  # position 0: identity
    angle = 5 * inv[1]  # pair (1, 5) of token 2 rotates by 5 * inv_freq[1]
    a, b = np.asarray(x[2, :, 1]), np.asarray(x[2, :, 5])
    np.testing.assert_allclose(out[2, :, 1], a * np.cos(angle) - b * np.sin(angle), rtol=1e-5)
    np.testing.assert_allclose(out[2, :, 5], b * np.cos(angle) + a * np.sin(angle), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)
