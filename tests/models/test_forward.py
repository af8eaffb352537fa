"""forward() over the paged cache: batching, chunked prefill, padding and logits_indices agree."""

import numpy as np
import pytest

from tests.models.paged import Chunk, PagedRunner, greedy

ATOL = 1e-4


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(7)
    return [tuple(int(t) for t in rng.integers(0, 256, n)) for n in (21, 9, 14)]


@pytest.fixture(scope="module")
def solo(tiny, prompts):
    """Each prompt alone: logits of every position, then 4 greedy tokens."""
    return [greedy(tiny, list(p), 4, page_size=4, seed=3) for p in prompts]


def test_chunked_prefill_matches_one_shot(tiny, prompts, solo):
    logits, tokens = greedy(tiny, list(prompts[0]), 4, chunk_size=8, page_size=4, seed=5)
    np.testing.assert_allclose(logits, solo[0][0], atol=ATOL)
    assert tokens == solo[0][1]


def test_mixed_batch_matches_sequences_alone(tiny, prompts, solo):
    """One step mixes a prefill chunk over a cached prefix, a whole prefill and a decode."""
    runner = PagedRunner(tiny, num_seqs=3, page_size=4, seed=11)
    runner.step([Chunk(0, prompts[0][:16], 0), Chunk(2, prompts[2], 0)])  # fills the cache
    first_decode = solo[2][1][0]
    logits = runner.step(
        [Chunk(0, prompts[0][16:], 16), Chunk(1, prompts[1], 0), Chunk(2, (first_decode,), 14)],
    )
    np.testing.assert_allclose(logits[0], solo[0][0][-1], atol=ATOL)
    np.testing.assert_allclose(logits[1], solo[1][0][-1], atol=ATOL)
    assert logits[2].argmax() == solo[2][1][1]


def test_logits_indices_select_rows(tiny, prompts, solo):
    runner = PagedRunner(tiny, page_size=4, seed=3)
    all_rows = runner.step([Chunk(0, prompts[0], 0)], all_logits=True)
    np.testing.assert_allclose(all_rows, solo[0][0], atol=ATOL)
    assert all_rows.shape == (len(prompts[0]), tiny.config.vocab_size)
    assert all_rows.dtype == np.float32
