"""The per-replica layout of a step's arrays: the module's worked example and, for random steps,
that every replica's rows carry exactly the flat step's tokens, pages and sampling settings."""

import numpy as np
import pytest

from pcjax.engine.batch import build_step_arrays
from pcjax.engine.request import Request
from pcjax.engine.scheduler import ScheduledStep
from pcjax.parallel.replica_batch import split_by_replica
from pcjax.sampling import SamplingParams

P = 4


def make_request(i: int, replica: int, computed: int, num_new: int, temperature=0.0) -> Request:
    prompt = list(range(10 + i, 10 + i + computed + num_new))
    req = Request(
        request_id=str(i),
        prompt_token_ids=prompt,
        params=SamplingParams(temperature=temperature, top_k=i + 1),
        seed=100 + i,
        stop_token_ids=frozenset(),
    )
    req.replica = replica
    req.num_computed_tokens = computed
    req.pages = [1 + j for j in range(-(-len(prompt) // P))]
    return req


def test_the_worked_example_of_the_module_docstring():
    entries = ((make_request(0, 1, 0, 3), 3), (make_request(1, 0, 4, 1), 1))
    entries += ((make_request(2, 1, 6, 1), 1),)
    arrays = build_step_arrays(ScheduledStep(entries, 0), P, 8)
    split = split_by_replica(arrays, 2)
    assert split.token_index[0, :2].tolist() == [3, -1]
    assert split.token_index[1, :5].tolist() == [0, 1, 2, 4, -1]
    assert split.cu_q_lens.tolist() == [[0, 1, 1], [0, 3, 4]]
    assert split.logits_indices.tolist() == [[0, 0], [2, 3]]
    assert split.entry_rows.tolist() == [2, 0, 3, 0]
    assert split.kv_lens.tolist() == [[5, 0], [3, 7]]
    assert split.max_q_len == 4  # the bucket of the longest row (3)


@pytest.mark.parametrize("seed", range(4))
def test_random_steps_keep_every_row_whole(seed):
    rng = np.random.default_rng(seed)
    num_replicas = int(rng.integers(1, 5))
    entries = []
    for i in range(int(rng.integers(1, 12))):
        computed, new = int(rng.integers(0, 20)), int(rng.integers(1, 9))
        req = make_request(i, int(rng.integers(0, num_replicas)), computed, new, temperature=0.5)
        entries.append((req, new))
    arrays = build_step_arrays(ScheduledStep(tuple(entries), 0), P, 16)
    split = split_by_replica(arrays, num_replicas)
    num_seqs = split.kv_lens.shape[1]
    for row, (req, new) in enumerate(entries):
        flat_row = split.entry_rows[row]
        d, local = divmod(int(flat_row), num_seqs)
        assert d == req.replica
        start, end = split.cu_q_lens[d, local], split.cu_q_lens[d, local + 1]
        tokens = arrays.tokens[split.token_index[d, start:end]]
        assert tokens.tolist() == req.all_token_ids[req.num_computed_tokens :][:new]
        positions = np.arange(req.num_computed_tokens, req.num_computed_tokens + new)
        assert split.positions[d, start:end].tolist() == positions.tolist()
        pages = np.asarray(req.pages)
        slots = pages[positions // P] * P + positions % P
        assert split.slot_mapping[d, start:end].tolist() == slots.tolist()
        assert split.kv_lens[d, local] == req.num_computed_tokens + new
        assert split.logits_indices[d, local] == end - 1
        assert split.page_table[d, local, : len(pages)].tolist() == pages.tolist()
        assert split.seeds[flat_row] == req.seed and split.top_k[flat_row] == req.params.top_k
    used = np.zeros(split.token_index.shape, bool)
    for d in range(num_replicas):
        used[d, : split.cu_q_lens[d, -1]] = True
    assert (split.token_index[~used] == -1).all() and (split.token_index[used] >= 0).all()
    assert (split.temperature[split.top_k == 0] == 0).all()  # padding rows are greedy


def test_a_row_of_an_unknown_replica_is_refused():
    arrays = build_step_arrays(ScheduledStep(((make_request(0, 3, 0, 2), 2),), 0), P, 8)
    with pytest.raises(ValueError, match="outside"):
        split_by_replica(arrays, 2)
