"""The OpenAI-compatible server, started as a real subprocess and driven by the `openai` client
(httpx for raw SSE, disconnects and malformed requests)."""

import asyncio
import json
import time

import httpx
import numpy as np
import openai
import pytest

from experiments import serving_utils
from tests.entrypoints.conftest import ENGINE_KWARGS, MAX_MODEL_LEN, MODEL_NAME, PAGE_SIZE


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def offline_engine():
    from pcjax import Engine

    return Engine(**ENGINE_KWARGS)


def token_prompt(seed: int, length: int) -> list[int]:
    return np.random.default_rng(seed).integers(3, 250, length).tolist()


def metrics(server) -> str:
    return httpx.get(f"{server.metrics_url}/metrics", timeout=10).text


def debug(server) -> dict:
    return httpx.get(f"{server.url}/debug/engine", timeout=30).json()


def wait_idle(server, timeout_s: float = 60) -> dict:
    """Waits until no request runs or waits; returns the last /debug/engine answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = debug(server)
        stats = state["stats"]
        if stats["running"] == 0 and stats["waiting"] == 0:
            return state
        assert time.monotonic() < deadline, f"the engine did not go idle: {stats}"
        time.sleep(0.2)


def complete(client, prompt, **kwargs):
    kwargs.setdefault("max_tokens", 4)
    kwargs.setdefault("temperature", 0)
    return client.completions.create(model=MODEL_NAME, prompt=prompt, **kwargs)


def test_health_was_503_while_loading(server):
    assert 503 in server.health_codes and server.health_codes[-1] == 200


def test_shared_prefix_hits_and_metrics_count_them(server, client):
    hits_before = serving_utils.metric_value(metrics(server), "pcjax:prefix_cache_hits_total")
    prefix = token_prompt(1, 48)
    first = complete(client, prefix + token_prompt(2, 5))
    second = complete(client, prefix + token_prompt(3, 5))
    cached = [r.usage.prompt_tokens_details.cached_tokens for r in (first, second)]
    assert cached[0] == 0
    assert cached[1] >= 48 and cached[1] % PAGE_SIZE == 0
    wait_idle(server)
    hits_after = serving_utils.metric_value(metrics(server), "pcjax:prefix_cache_hits_total")
    assert hits_after - hits_before == sum(cached)


def test_streaming_ends_with_the_usage_chunk(client):
    prefix = token_prompt(4, 40)
    complete(client, prefix + [5])
    chunks = list(
        complete(
            client, prefix + [6], stream=True, max_tokens=5, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 40
    assert chunks[-2].choices[0].finish_reason == "length"
    chat = list(
        client.chat.completions.create(
            model=MODEL_NAME,
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chat[0].choices[0].delta.role == "assistant"
    assert chat[-1].choices == [] and chat[-1].usage.completion_tokens == 3


def test_cache_salt_isolates_tenants(client):
    prefix = token_prompt(7, 40)

    def cached(tail: int, salt=None) -> int:
        extra = {"cache_salt": salt} if salt else None
        return complete(
            client, prefix + [tail], extra_body=extra
        ).usage.prompt_tokens_details.cached_tokens

    assert cached(1, "tenant-a") == 0
    assert cached(2, "tenant-b") == 0
    assert cached(3) == 0
    assert cached(4, "tenant-a") == 40
    assert cached(5, "tenant-b") == 40


def test_sampling_settings_still_hit(client):
    prefix = token_prompt(8, 40)
    complete(client, prefix + [1])
    for i, kwargs in enumerate(
        [dict(temperature=0.7), dict(temperature=1.0, top_p=0.5), dict(temperature=0.9, seed=5)]
    ):
        out = complete(client, prefix + [10 + i], **kwargs)
        assert out.usage.prompt_tokens_details.cached_tokens == 40


def test_greedy_outputs_equal_the_offline_engine(client, offline_engine):
    from pcjax import SamplingParams

    prompts = [token_prompt(20 + i, 24) for i in range(2)]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    expected = offline_engine.generate(prompts, params, use_tqdm=False)
    served = complete(client, prompts, max_tokens=6, extra_body={"ignore_eos": True})
    assert [c.text for c in sorted(served.choices, key=lambda c: c.index)] == [
        o.text for o in expected
    ]
    messages = [{"role": "user", "content": "What is a prefix cache?"}]
    offline_chat = offline_engine.chat(messages, params, use_tqdm=False)[0]
    chat = client.chat.completions.create(
        model=MODEL_NAME,
        messages=messages,
        max_tokens=6,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert chat.choices[0].message.content == offline_chat.text


def test_disconnects_abort_and_free_pages(server):
    body = {"model": MODEL_NAME, "prompt": token_prompt(30, 30), "max_tokens": 200,
            "temperature": 0, "ignore_eos": True}  # fmt: skip
    with httpx.Client(timeout=60) as http:
        with http.stream(
            "POST", f"{server.url}/v1/completions", json={**body, "stream": True}
        ) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    break  # close after the first chunk
        with pytest.raises(httpx.ReadTimeout):
            http.post(f"{server.url}/v1/completions", json=body, timeout=1.0)
    state = wait_idle(server)
    assert state["integrity"] == "ok"
    assert state["stats"]["in_use_pages"] == 0
    deadline = time.monotonic() + 30
    while debug(server)["in_flight_sequences"] and time.monotonic() < deadline:
        time.sleep(0.2)  # the aborted streams close
    assert debug(server)["in_flight_sequences"] == 0
    text = metrics(server)
    assert serving_utils.metric_value(text, "pcjax:num_requests_running") == 0
    assert (
        serving_utils.metric_value(text, "pcjax:request_success_total", finished_reason="abort")
        >= 2
    )


@pytest.mark.parametrize(
    "path, body, status",
    [
        ("/v1/completions", "{not json", 400),
        ("/v1/completions", {"prompt": "x", "temperature": -1}, 400),
        ("/v1/completions", {"prompt": "x", "n": 0}, 400),
        ("/v1/completions", {"prompt": "x", "top_k": 2**31}, 400),
        ("/v1/completions", {"prompt": "x", "seed": -1}, 400),
        ("/v1/completions", {"prompt": "x", "max_tokens": 10 * MAX_MODEL_LEN}, 400),
        ("/v1/completions", {"prompt": [5] * MAX_MODEL_LEN}, 400),
        ("/v1/completions", {"prompt": [10**6]}, 400),
        ("/v1/completions", {"prompt": "x", "prompt_cache_retention": "forever"}, 400),
        ("/v1/completions", {"prompt": "x", "model": "no-such-model"}, 404),
        ("/v1/chat/completions", {"messages": []}, 400),
        ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400),
        ("/detokenize", {"tokens": [-1]}, 400),
    ],
)
def test_bad_input_gets_its_status_and_the_server_goes_on(server, path, body, status):
    kwargs = {"content": body} if isinstance(body, str) else {"json": body}
    r = httpx.post(
        f"{server.url}{path}", headers={"content-type": "application/json"}, timeout=30, **kwargs
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_admission_limit_answers_429(server):
    body = {"model": MODEL_NAME, "prompt": token_prompt(40, 8), "max_tokens": 30,
            "temperature": 0, "ignore_eos": True, "n": 4}  # fmt: skip

    async def flood():
        async with httpx.AsyncClient(timeout=120) as http:
            tasks = [http.post(f"{server.url}/v1/completions", json=body) for _ in range(6)]
            return await asyncio.gather(*tasks)

    codes = sorted(r.status_code for r in asyncio.run(flood()))
    assert 429 in codes and 200 in codes
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert wait_idle(server)["integrity"] == "ok"


def test_small_endpoints(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]
    assert httpx.get(f"{server.url}/version").json()["version"]
    body = {"prompt": "abc", "add_special_tokens": False}
    tokens = httpx.post(f"{server.url}/tokenize", json=body).json()["tokens"]
    assert len(tokens) == 3
    assert httpx.post(f"{server.url}/detokenize", json={"tokens": tokens}).json()["prompt"] == "abc"
    for probe in ("/get_model_info", "/model_info", "/get_server_info", "/server_info"):
        assert httpx.get(f"{server.url}{probe}", timeout=30).status_code == 200
    prefix = token_prompt(50, 40)
    complete(client, prefix + [1])
    assert httpx.post(f"{server.url}/reset_prefix_cache", timeout=30).json()["reset"] is True
    assert complete(client, prefix + [2]).usage.prompt_tokens_details.cached_tokens == 0
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("prefix_cache_queries_total", "prompt_tokens_total", "generation_tokens_total",
                 "kv_cache_usage_perc", "cache_config_info", "time_to_first_token_seconds_count",
                 "e2e_request_latency_seconds_count", "inter_token_latency_seconds_count",
                 "request_queue_time_seconds_count"):  # fmt: skip
        assert f"pcjax:{name}" in text
    assert json.loads(json.dumps(debug(server)))["integrity"] == "ok"


def test_small_load_with_disconnects_and_malformed_requests(server, offline_engine):
    from experiments import load_test
    from pcjax import SamplingParams

    prompts = load_test.make_prompts(0, groups=2, per_group=4, prefix_len=24, suffix_len=4)
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    expected = [o.text for o in offline_engine.generate(prompts, params, use_tqdm=False)]
    jobs = load_test.make_jobs(prompts, 24, disconnect=0.2, malformed=0.2, seed=1)
    assert {kind for kind, _, _ in jobs} == {"ok", "disconnect", "malformed"}
    records = asyncio.run(
        load_test.run_load(
            server.url,
            MODEL_NAME,
            prompts,
            expected,
            jobs,
            clients=6,
            max_tokens=6,
            time_limit_s=240,
        )
    )
    summary = load_test.summarize(records, load_test.settle(server.url), wall_s=0.0)
    assert summary["passed"], summary
    assert summary["requests"] == 24 and summary["hit_rate_well_formed"] > 0.5
