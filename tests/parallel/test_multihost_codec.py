"""The leader's command messages round-trip exactly (`pcjax.parallel.multihost`)."""

import numpy as np
import pytest

from pcjax.parallel.multihost import HEADER_LEN, decode, encode


def test_commands_round_trip_every_dtype_and_shape():
    rng = np.random.default_rng(0)
    arrays = [
        rng.integers(-5, 5, (3, 4, 2)).astype(np.int32),
        rng.standard_normal(7).astype(np.float32),
        np.array([2**32 - 1, 0, 12345], np.uint32),
        np.int32(7).reshape(()),
        np.zeros((0, 2), np.int32),
        np.array([np.nan, -np.inf], np.float32),
    ]
    header, body = encode("run", arrays)
    assert header.shape == (HEADER_LEN,) and header.dtype == np.int32
    assert body.size >= 64 and body.size & (body.size - 1) == 0  # a power of two
    op, out = decode(header, body)
    assert op == "run" and len(out) == len(arrays)
    for a, b in zip(arrays, out, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_empty_commands_and_bad_arrays():
    assert decode(*encode("stop", [])) == ("stop", [])
    with pytest.raises(ValueError, match="cannot send"):
        encode("run", [np.zeros(3, np.float64)])
    with pytest.raises(ValueError, match="too many arrays"):
        encode("run", [np.zeros(1, np.int32)] * 30)
    with pytest.raises(ValueError):
        encode("jump", [])
