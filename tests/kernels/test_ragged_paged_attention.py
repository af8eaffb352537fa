"""The interface: write_kv, a hand-computed case for every implementation, dispatch, selection."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from pcjax import kernels
from pcjax.kernels import (
    IMPLS,
    AttentionMetadata,
    native,
    ragged_paged_attention,
    resolve_attention_impl,
    rpa_cpu,
    write_kv,
)
from pcjax.kernels.testing import make_batch

NATIVE = kernels.cpu_native_available()
NATIVE_OR_XLA = "cpu_native" if NATIVE else "cpu_xla"


def test_write_kv_puts_each_token_in_its_slot_and_nothing_else():
    batch = make_batch(
        0,
        [1, 4, 0],
        [5, 9, 0],
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        page_size=3,
        num_tokens=7,
    )
    k_pages, v_pages = write_kv(
        batch.k_pages, batch.v_pages, batch.k, batch.v, batch.md.slot_mapping
    )
    page_size = batch.k_pages.shape[1]
    slots = np.asarray(batch.md.slot_mapping)
    for new, before, after in (
        (batch.k, batch.k_pages, k_pages),
        (batch.v, batch.v_pages, v_pages),
    ):
        flat_before = np.asarray(before).reshape(-1, 2, 8)
        flat_after = np.asarray(after).reshape(-1, 2, 8)
        np.testing.assert_array_equal(flat_after[slots[:5]], np.asarray(new)[:5])
        untouched = np.setdiff1d(np.arange(flat_after.shape[0]), slots)
        np.testing.assert_array_equal(flat_after[untouched], flat_before[untouched])
    # Decode token of sequence 0 sits at position 4: page_table[0, 4 // 3], offset 1.
    assert slots[0] == int(batch.md.page_table[0, 1]) * page_size + 1


def _hand_case():
    """One head (H = 2, P = 2, sm_scale = 1) where every softmax is by hand.

    Keys k0 = (0, 0), k1 = (ln 3, 0); values v0 = (4, 0), v1 = (0, 8); every query is (1, 0), so
    the scores are 0 and ln 3 and a query that sees both weighs them 1/4 and 3/4.
    Sequence 0 decodes at position 1 (sees k0, k1): out = (1, 6).
    Sequence 1 prefills 2 tokens (positions 0, 1): out = v0 = (4, 0), then (1, 6).
    Sequence 2 is padding; token 3 belongs to no sequence: both give 0.
    """
    k_pages = np.full((4, 2, 1, 2), np.nan, np.float32)  # page 0 (null) and page 3 stay NaN
    v_pages = np.full((4, 2, 1, 2), np.nan, np.float32)
    for page in (1, 2):  # sequence 0 owns page 2, sequence 1 owns page 1
        k_pages[page, :, 0] = [[0, 0], [math.log(3), 0]]
        v_pages[page, :, 0] = [[4, 0], [0, 8]]
    md = AttentionMetadata(
        slot_mapping=jnp.array([5, 2, 3, 0], jnp.int32),
        page_table=jnp.array([[2, 0], [1, 0], [0, 0]], jnp.int32),
        kv_lens=jnp.array([2, 2, 0], jnp.int32),
        cu_q_lens=jnp.array([0, 1, 3, 3], jnp.int32),
        max_q_len=2,
    )
    q = jnp.tile(jnp.array([1.0, 0.0]), (4, 1, 1))  # f[T=4, N=1, H=2]
    want = np.array([[1, 6], [4, 0], [1, 6], [0, 0]], np.float32)[:, None, :]
    return q, jnp.asarray(k_pages), jnp.asarray(v_pages), md, want


@pytest.mark.parametrize("impl", IMPLS)
def test_hand_computed_case(impl):
    q, k_pages, v_pages, md, want = _hand_case()
    out = ragged_paged_attention(q, k_pages, v_pages, md, sm_scale=1.0, impl=impl)
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


def test_hand_computed_case_with_sliding_window_of_one():
    # A window of 1: every query sees only itself, so the output is its own value row.
    q, k_pages, v_pages, md, _ = _hand_case()
    want = np.array([[0, 8], [4, 0], [0, 8], [0, 0]], np.float32)[:, None, :]
    for impl in IMPLS:
        out = ragged_paged_attention(
            q, k_pages, v_pages, md, sm_scale=1.0, sliding_window=1, impl=impl
        )
        np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6, err_msg=impl)


@pytest.mark.parametrize(
    ("name", "platform", "want"),
    [
        ("reference", "gpu", "reference"),
        ("pallas", "tpu", "pallas_tpu"),
        ("pallas", "cuda", "pallas_gpu"),
        ("pallas", "cpu", "pallas_tpu"),
        ("auto", "tpu", "pallas_tpu"),
        ("auto", "gpu", "pallas_gpu"),
        ("auto", "rocm", "pallas_gpu"),
        ("auto", "cpu", NATIVE_OR_XLA),
        ("cpu", "cpu", NATIVE_OR_XLA),
        ("cpu_xla", "cpu", "cpu_xla"),
        pytest.param(
            "cpu_native",
            "cpu",
            "cpu_native",
            marks=pytest.mark.skipif(not NATIVE, reason="no C++ compiler here"),
        ),
        ("pallas_gpu", "cpu", "pallas_gpu"),
    ],
)
def test_resolve_attention_impl(name, platform, want):
    assert resolve_attention_impl(name, platform) == want


def test_cpu_falls_back_to_the_xla_path_without_the_native_kernel(monkeypatch):
    monkeypatch.setattr(kernels, "cpu_native_available", lambda: False)
    assert resolve_attention_impl("auto", "cpu") == "cpu_xla"
    assert resolve_attention_impl("cpu", "cpu") == "cpu_xla"
    assert resolve_attention_impl("auto", "gpu") == "pallas_gpu"


def test_cpu_native_asked_for_where_it_cannot_build_is_a_clear_error(monkeypatch):
    def unavailable():
        raise native.NativeUnavailable("no C++ compiler 'c++' on PATH (set CXX)")

    monkeypatch.setattr(rpa_cpu, "require", unavailable)
    with pytest.raises(ValueError, match="'cpu_native' is not available here: no C\\+\\+ compiler"):
        resolve_attention_impl("cpu_native", "cpu")


def test_resolve_attention_impl_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown attention impl"):
        resolve_attention_impl("flash", "cpu")
    with pytest.raises(ValueError, match="unknown platform"):
        resolve_attention_impl("auto", "metal")
