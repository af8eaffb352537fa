"""The sampler's building blocks (the engine tests cover sampling end to end)."""

import jax.numpy as jnp
import numpy as np

from pcjax.sampling import first_argmax


def test_first_argmax_is_jnp_argmax_with_ties_nans_and_infinities():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 300)).astype(np.float32)
    x[1, [5, 7]] = 50.0  # a tie: the first wins
    x[2, [9, 3]] = np.nan  # NaN counts as the maximum: the first NaN wins
    x[3, :] = -np.inf  # nothing above -inf: index 0
    x[4, 299] = np.inf
    x[5, :] = 1.0
    got = first_argmax(jnp.asarray(x))
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(got, jnp.argmax(jnp.asarray(x), axis=-1))
    np.testing.assert_array_equal(got[:6], [int(np.argmax(x[0])), 5, 3, 0, 299, 0])
