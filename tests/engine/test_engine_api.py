"""The Engine's user-facing behaviour: outputs, sampling, stopping, bad input."""

import pytest

from pcjax import SamplingParams
from tests.engine.conftest import GREEDY, MAX_MODEL_LEN, make_engine


@pytest.fixture(scope="module")
def engine():
    return make_engine()


def test_generate_returns_outputs_in_order_with_fields(engine, prompts):
    outputs = engine.generate(prompts[:3], GREEDY, use_tqdm=False)
    assert [o.prompt_token_ids for o in outputs] == prompts[:3]
    for out in outputs:
        assert len(out.token_ids) == GREEDY.max_tokens
        assert out.finish_reason == "length"
        assert 0 <= out.ttft_s <= out.latency_s
        assert isinstance(out.text, str)


def test_string_prompt_is_tokenized_and_text_decoded(engine):
    out = engine.generate("hello prefix cache", GREEDY, use_tqdm=False)[0]
    assert out.prompt == "hello prefix cache"
    assert out.prompt_token_ids == list(engine.tokenizer.encode("hello prefix cache"))
    assert out.text == engine.tokenizer.decode(out.token_ids, skip_special_tokens=True)


@pytest.mark.parametrize(
    "prompt, params, message",
    [
        ([], GREEDY, "empty"),
        ("", GREEDY, "empty"),
        ([1] * MAX_MODEL_LEN, GREEDY, "max_model_len"),
        ([1, 10**9], GREEDY, "out of range"),
        ([1, -1], GREEDY, "out of range"),
        (3.5, GREEDY, "a prompt must be"),
        ([1, 2], "greedy", "SamplingParams"),
    ],
)
def test_bad_input_raises_and_engine_keeps_serving(engine, prompts, prompt, params, message):
    before = engine.generate(prompts[:2], GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match=message):
        engine.generate([prompts[0], prompt], params, use_tqdm=False)
    assert not engine.has_unfinished_requests()
    after = engine.generate(prompts[:2], GREEDY, use_tqdm=False)
    assert [o.token_ids for o in after] == [o.token_ids for o in before]
    engine.check_integrity()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-1), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-2), "top_k"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(stop=[""]), "stop"),
        (dict(stop_token_ids=[-1]), "stop_token_ids"),
    ],
)
def test_bad_sampling_params_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_seeded_sampling_is_reproducible_and_batch_independent(engine, prompts):
    params = SamplingParams(
        temperature=1.0, top_p=0.9, top_k=50, seed=7, max_tokens=10, ignore_eos=True
    )
    alone = engine.generate([prompts[0]], params, use_tqdm=False)[0].token_ids
    batched = engine.generate(prompts[:4], params, use_tqdm=False)[0].token_ids
    other_seed = SamplingParams(temperature=1.0, seed=8, max_tokens=10, ignore_eos=True)
    different = engine.generate([prompts[0]], other_seed, use_tqdm=False)[0].token_ids
    assert alone == batched
    assert alone != different


def test_top_k_one_is_greedy(engine, prompts):
    top1 = SamplingParams(temperature=0.8, top_k=1, seed=3, max_tokens=12, ignore_eos=True)
    sampled = engine.generate(prompts[:3], top1, use_tqdm=False)
    greedy = engine.generate(prompts[:3], GREEDY, use_tqdm=False)
    assert [o.token_ids for o in sampled] == [o.token_ids for o in greedy]


def test_stop_token_ids_and_eos(engine, prompts):
    free = engine.generate([prompts[0]], GREEDY, use_tqdm=False)[0].token_ids
    stop_at = free[4]
    params = SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[stop_at], ignore_eos=True)
    out = engine.generate([prompts[0]], params, use_tqdm=False)[0]
    assert out.finish_reason == "stop"
    assert out.token_ids == free[: free.index(stop_at) + 1]


def test_stop_string_cuts_text(engine, prompts):
    free = engine.generate([prompts[1]], GREEDY, use_tqdm=False)[0]
    if len(free.text) < 4:
        pytest.skip("the random model generated too little text to pick a stop string")
    stop = free.text[2:4]
    params = SamplingParams(temperature=0, max_tokens=12, stop=[stop], ignore_eos=True)
    out = engine.generate([prompts[1]], params, use_tqdm=False)[0]
    assert out.finish_reason == "stop"
    assert out.text == free.text[: free.text.find(stop)]
    assert stop not in out.text


def test_max_model_len_stops_generation(prompts):
    engine = make_engine(max_model_len=24)
    params = SamplingParams(temperature=0, max_tokens=100, ignore_eos=True)
    out = engine.generate([prompts[0]], params, use_tqdm=False)[0]
    assert len(out.prompt_token_ids) + len(out.token_ids) == 24
    assert out.finish_reason == "length"


def test_add_request_and_step_api(engine, prompts):
    ids = [engine.add_request(p, GREEDY) for p in prompts[:3]]
    finished = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            finished[out.request_id] = out
    assert sorted(finished) == sorted(ids)
    with pytest.raises(ValueError, match="empty"):
        engine.add_request([], GREEDY)
    assert not engine.has_unfinished_requests()


def test_engine_config_errors():
    with pytest.raises(ValueError, match="page_size"):
        make_engine(page_size=0)
    with pytest.raises(ValueError, match="cannot hold"):
        make_engine(num_pages=5)
    with pytest.raises(ValueError, match="eviction_policy"):
        make_engine(eviction_policy="random")


def test_chat_renders_the_template_and_later_turns_hit_the_cache():
    engine = make_engine(max_model_len=320, num_pages=96)
    turn1 = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi"},
    ]
    first = engine.chat(turn1, GREEDY, use_tqdm=False)[0]
    assert first.prompt == engine.render_chat(turn1)
    assert first.prompt.endswith("<|im_start|>assistant\n")
    assert first.prompt_token_ids == engine.tokenizer.encode(first.prompt, add_special_tokens=False)
    turn2 = [*turn1, {"role": "assistant", "content": first.text}, {"role": "user", "content": "?"}]
    second = engine.chat([turn2], GREEDY, use_tqdm=False)[0]
    assert second.num_cached_tokens >= engine.config.page_size
    assert second.prompt.startswith(first.prompt)
    engine.check_integrity()


@pytest.mark.parametrize(
    "conversation, message",
    [
        ([], "no conversations"),
        ([{"role": "robot", "content": "x"}], "role"),
        ([{"role": "user"}], "content"),
        ([[]], "at least one message"),
    ],
)
def test_chat_rejects_malformed_conversations(engine, conversation, message):
    with pytest.raises(ValueError, match=message):
        engine.chat(conversation, GREEDY, use_tqdm=False)
    assert not engine.has_unfinished_requests()
