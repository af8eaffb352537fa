"""The native CPU kernels: attention at engine-like shapes, the skinny matmul, bad metadata, and
the build-and-cache loader (`pcjax.kernels.native`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcjax.kernels import cpu_native_available, native, rpa_cpu, skinny_matmul
from pcjax.kernels.ragged_paged_attention import (
    AttentionMetadata,
)
from pcjax.kernels.testing import assert_matches_reference, make_batch, written_and_reference
from pcjax.models.transformer import dot_nt

pytestmark = pytest.mark.skipif(
    not cpu_native_available(),
    reason="the native CPU kernels do not build here (no C++ compiler)",
)


@pytest.mark.parametrize(
    ("dtype", "num_heads", "num_kv_heads", "head_dim", "window"),
    [
        (jnp.float32, 12, 4, 64, None),  # pcjax-small
        (jnp.float32, 8, 1, 128, None),  # a GQA group of 8: the general path at decode
        (jnp.bfloat16, 4, 2, 64, 50),
        (jnp.float32, 6, 3, 48, None),  # head_dim without a compiled-in size
    ],
)
def test_attention_matches_reference_on_long_ragged_steps(
    dtype, num_heads, num_kv_heads, head_dim, window
):
    """Many tiles per sequence, query blocks split over several items, few-row decodes next to
    long chunks, sequences ending mid-page, NaN everywhere the kernel must not read."""
    q_lens = (1, 70, 1, 0, 130, 5)
    kv_lens = (300, 333, 17, 0, 130, 205)
    batch = make_batch(
        3,
        q_lens,
        kv_lens,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        page_size=16,
        dtype=dtype,
        num_tokens=sum(q_lens) + 9,
    )
    _assert_kernel_matches_reference(
        batch, sum(q_lens), sm_scale=head_dim**-0.5, sliding_window=window
    )


def _assert_kernel_matches_reference(batch, real_tokens: int, **args):
    """Runs the native kernel on the batch (its K/V written): the real tokens' rows are finite
    and match the reference, the padding tokens' rows are 0."""
    k_pages, v_pages, want = written_and_reference(batch, **args)
    out = jax.jit(lambda *a: rpa_cpu.ragged_paged_attention_cpu(*a, **args))(
        batch.q, k_pages, v_pages, batch.md
    )
    assert np.isfinite(np.asarray(out[:real_tokens], np.float32)).all()
    np.testing.assert_array_equal(np.asarray(out[real_tokens:], np.float32), 0)
    assert_matches_reference(out, want)


def _cascade_case(members: int):
    """(q_lens, kv_lens, shared) of a step where prefix caching shares pages between decodes.

    Sequence 0 and ``members - 1`` decodes share 20 pages (320 tokens); two of those share 5 more
    between them; three more decodes share 5 pages among themselves (80 tokens); one decode shares
    2 pages with sequence 0 (32 tokens: too few for a cascade); a 40-token chunk shares 20 pages
    (not a decode); one decode shares nothing. Members end mid-page or on a page boundary.
    """
    q_lens, kv_lens, shared = [1], [333], {}
    for i in range(1, members):
        q_lens.append(1), kv_lens.append(321 + 7 * i)
        shared[len(kv_lens) - 1] = (0, 20)
    kv_lens[-1] = kv_lens[-2] = 417  # the pair sharing 25 pages (400 tokens)
    shared[len(kv_lens) - 1] = (len(kv_lens) - 2, 25)
    first = len(kv_lens)
    for i in range(3):
        q_lens.append(1), kv_lens.append(96 + 16 * i)
        if i:
            shared[first + i] = (first, 5)
    q_lens += [1, 40, 1]
    kv_lens += [60, 380, 150]
    shared[len(kv_lens) - 3] = (0, 2)
    shared[len(kv_lens) - 2] = (0, 20)
    return q_lens, kv_lens, shared


@pytest.mark.parametrize(
    ("dtype", "num_heads", "num_kv_heads", "head_dim", "members", "soft_cap"),
    [
        (jnp.float32, 9, 3, 64, 8, None),  # smollm2-135m, a batch of 8 on one system prompt
        (jnp.float32, 12, 4, 64, 50, None),  # more members than one first-pass item holds
        (jnp.bfloat16, 8, 2, 128, 5, 30.0),  # GQA group of 4 (the most), head_dim 128, soft cap
        (jnp.float32, 4, 4, 64, 3, None),  # no GQA
    ],
)
def test_decodes_sharing_prefix_pages_match_reference(
    dtype, num_heads, num_kv_heads, head_dim, members, soft_cap
):
    """The cascade (decodes attending to the pages they share together, then each to its own):
    several groups, a pair sharing more than its group, shares too short to cascade, a chunk on
    the shared pages beside them, NaN everywhere the kernel must not read."""
    q_lens, kv_lens, shared = _cascade_case(members)
    batch = make_batch(
        members + 7,
        q_lens,
        kv_lens,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        page_size=16,
        dtype=dtype,
        num_tokens=sum(q_lens) + 3,
        shared=shared,
    )
    _assert_kernel_matches_reference(batch, sum(q_lens), sm_scale=head_dim**-0.5, soft_cap=soft_cap)


def _one_sequence(page_table, kv_len):
    batch = make_batch(0, [1], [5], num_heads=2, num_kv_heads=1, head_dim=16, page_size=4)
    md = AttentionMetadata(
        slot_mapping=batch.md.slot_mapping,
        page_table=jnp.asarray(page_table, jnp.int32),
        kv_lens=jnp.asarray([kv_len], jnp.int32),
        cu_q_lens=batch.md.cu_q_lens,
        max_q_len=1,
    )
    return batch.q, batch.k_pages, batch.v_pages, md


@pytest.mark.parametrize(
    ("page_table", "kv_len", "message"),
    [([[1, 999]], 5, "is not among the"), ([[1, 2]], 9, "outside the step")],
)
def test_attention_reports_metadata_out_of_range_instead_of_reading_it(page_table, kv_len, message):
    q, k_pages, v_pages, md = _one_sequence(page_table, kv_len)
    with pytest.raises(Exception, match=message):
        jax.block_until_ready(
            rpa_cpu.ragged_paged_attention_cpu(q, k_pages, v_pages, md, sm_scale=1.0)
        )


def test_attention_rejects_non_positive_window_and_soft_cap():
    q, k_pages, v_pages, md = _one_sequence([[1, 2]], 5)
    with pytest.raises(ValueError, match="sliding_window must be positive"):
        rpa_cpu.ragged_paged_attention_cpu(q, k_pages, v_pages, md, sm_scale=1.0, sliding_window=0)
    with pytest.raises(ValueError, match="soft_cap must be positive"):
        rpa_cpu.ragged_paged_attention_cpu(q, k_pages, v_pages, md, sm_scale=1.0, soft_cap=-1.0)


@pytest.mark.parametrize(
    ("rows", "out_dim", "in_dim", "dtype", "out_dtype"),
    [
        (8, 6144, 768, jnp.float32, None),  # a decode step's gate/up projection
        (1, 70, 33, jnp.float32, jnp.float32),  # in_dim not a whole number of vectors
        (3, 65, 64, jnp.float32, None),  # an odd number of output rows
        (16, 320, 96, jnp.float32, jnp.float32),  # the most rows, an LM head
        (5, 130, 80, jnp.bfloat16, None),
        (2, 64, 40, jnp.bfloat16, jnp.float32),
        (12, 100, 72, jnp.bfloat16, jnp.float32),  # several register tiles of x rows
    ],
)
def test_skinny_matmul_matches_xla_dot(rows, out_dim, in_dim, dtype, out_dtype):
    rng = np.random.default_rng(rows + out_dim)
    x = jnp.asarray(rng.standard_normal((rows, in_dim)), dtype)
    w = jnp.asarray(rng.standard_normal((out_dim, in_dim)), dtype)
    got = jax.jit(lambda x, w: skinny_matmul.dot_nt_skinny(x, w, out_dtype))(x, w)
    want = dot_nt(x, w, out_dtype)
    assert got.shape == want.shape and got.dtype == want.dtype
    scale = float(jnp.abs(want.astype(jnp.float32)).max())
    np.testing.assert_allclose(
        np.asarray(got, np.float32) / scale,
        np.asarray(want, np.float32) / scale,
        atol=1e-6 if dtype == jnp.float32 else 1e-2,
    )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_skinny_matmul_reads_no_further_than_a_rows_end(dtype):
    # 40 inputs: a row ends inside a vector register, where the next row's inf begins
    x = jnp.ones((3, 40), dtype)
    w = jnp.ones((2, 40), dtype).at[1, 0].set(jnp.inf)
    got = np.asarray(skinny_matmul.dot_nt_skinny(x, w, jnp.float32))
    assert (got[:, 0] == 40.0).all() and (got[:, 1] == np.inf).all()


def test_skinny_matmul_rejects_too_many_rows():
    x, w = jnp.ones((17, 8)), jnp.ones((4, 8))
    with pytest.raises(ValueError, match="at most 16"):
        skinny_matmul.dot_nt_skinny(x, w)


# --- the loader ------------------------------------------------------------------------------


def test_a_failed_build_names_the_source_and_shows_the_compiler_output(tmp_path, monkeypatch):
    monkeypatch.setenv("PCJAX_CACHE_DIR", str(tmp_path / "cache"))
    source = tmp_path / "broken.cc"
    source.write_text("this is not C++\n")
    with pytest.raises(native.NativeUnavailable, match="building broken.cc failed") as error:
        native._build(source, "c++")
    assert "error" in str(error.value)
    assert not list((tmp_path / "cache").glob("*.so"))  # nothing half-written is kept


def test_builds_are_cached_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("PCJAX_CACHE_DIR", str(tmp_path))
    source = tmp_path / "tiny.cc"
    source.write_text('extern "C" int pcjax_tiny() { return 1; }\n')
    first = native._build(source, "c++")
    assert native._build(source, "c++") == first  # found, not rebuilt
    source.write_text('extern "C" int pcjax_tiny() { return 2; }\n')
    assert native._build(source, "c++") != first  # a changed source is a new library


def test_disabled_or_missing_compiler_is_reported_once_and_remembered(monkeypatch):
    symbols = (("PcjaxNothing", "pcjax_test_nothing"),)
    monkeypatch.setenv("PCJAX_NATIVE", "0")
    with pytest.raises(native.NativeUnavailable, match="PCJAX_NATIVE=0"):
        native.load("skinny_matmul.cc", symbols)
    monkeypatch.delenv("PCJAX_NATIVE")
    with pytest.raises(native.NativeUnavailable, match="PCJAX_NATIVE=0"):  # the outcome is kept
        native.load("skinny_matmul.cc", symbols)
    monkeypatch.setenv("CXX", "no-such-compiler")
    other = (("PcjaxNothing", "pcjax_test_nothing_2"),)
    with pytest.raises(native.NativeUnavailable, match="no C\\+\\+ compiler"):
        native.load("skinny_matmul.cc", other)
