"""`Engine`: offline generation with prefix caching (vLLM's `LLM` shape).

A request's way through it: tokenize -> radix match (>= 1 token left to compute) -> lock the
matched path -> allocate pages (evicting by policy when short) -> jitted prefill over cached + new
tokens (in chunks) -> the prompt's pages go into the tree -> decode loop -> the tokens whose KV was
written go into the tree, duplicate and tail pages are freed -> unlock.
"""

import dataclasses
import itertools
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from pcjax import models
from pcjax.cache import kv_pages
from pcjax.config import EngineConfig
from pcjax.engine import stopping
from pcjax.engine.batch import build_step_arrays
from pcjax.engine.components import build_cache_components, resolve_limits
from pcjax.engine.host_transfers import HostTransfers
from pcjax.engine.kv_manager import KVManager
from pcjax.engine.request import Request, RequestOutput, Status
from pcjax.engine.runner import ModelRunner
from pcjax.engine.scheduler import Scheduler
from pcjax.kernels import resolve_attention_impl
from pcjax.metrics import Counters
from pcjax.sampling import SamplingParams


class Engine:
    """Generates text with a paged KV cache shared through a radix prefix tree.

    ``Engine(model="pcjax-small", enable_prefix_caching=True, ...)`` takes the fields of
    `EngineConfig` as keywords (or a ready `config=`). Invalid input to `generate` / `add_request`
    raises `ValueError` naming the problem and leaves the engine as it was.
    """

    def __init__(self, model: str = "pcjax-small", *, config: EngineConfig | None = None, **kwargs):
        self.config = config if config is not None else EngineConfig(model=model, **kwargs)
        cfg = self.config
        self.model = models.load(cfg.model, dtype=cfg.dtype)
        self.tokenizer = self.model.tokenizer
        self.limits = resolve_limits(cfg, self.model.config)
        pool, cache = build_cache_components(cfg, self.limits.num_pages, self.model.config)
        self.kv = KVManager(pool, cache, cfg.page_size, caching=cfg.enable_prefix_caching)
        self.scheduler = Scheduler(
            self.kv,
            max_num_seqs=cfg.max_num_seqs,
            max_num_batched_tokens=self.limits.max_num_batched_tokens,
        )
        self.attention_impl = resolve_attention_impl(cfg.attention_impl, jax.default_backend())
        mc = self.model.config
        cache_arrays = kv_pages.allocate_kv_cache(
            mc.num_layers,
            self.limits.num_pages,
            cfg.page_size,
            mc.num_kv_heads,
            mc.head_dim,
            cfg.dtype,
            fill_value=float("nan") if cfg.debug else 0.0,
        )
        self.runner = ModelRunner(
            self.model.graphdef, self.model.params, cache_arrays, self.attention_impl
        )
        self.kv.transfer = HostTransfers(
            self.runner, pool, cache.host_pool, mc, cfg.page_size, cfg.dtype, cfg.debug
        )
        self.counters = Counters()
        self._ids = itertools.count()
        self._num_seeded = 0
        self._requests: dict[str, Request] = {}

    # ----------------------------------------------------------------------------- requests

    def add_request(
        self,
        prompt: str | list[int],
        sampling_params: SamplingParams | None = None,
        request_id: str | None = None,
    ) -> str:
        """Queues one request; returns its id. Raises ValueError for invalid input."""
        req = self._make_request(prompt, sampling_params or SamplingParams(), request_id)
        self._requests[req.request_id] = req
        self.scheduler.add(req)
        return req.request_id

    def _make_request(self, prompt, params: SamplingParams, request_id) -> Request:
        if not isinstance(params, SamplingParams):
            raise ValueError(f"sampling_params must be SamplingParams, got {type(params).__name__}")
        token_ids = self._tokenize(prompt)
        request_id = str(next(self._ids)) if request_id is None else str(request_id)
        if request_id in self._requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids.update(self.model.eos_token_ids)
        return Request(
            request_id=request_id,
            prompt_token_ids=token_ids,
            params=params,
            seed=params.seed if params.seed is not None else self._default_seed(),
            stop_token_ids=frozenset(stop_ids),
            prompt=prompt if isinstance(prompt, str) else None,
        )

    def _default_seed(self) -> int:
        self._num_seeded += 1
        return (self.config.seed * 1_000_003 + self._num_seeded) % 2**32

    def _tokenize(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("the prompt is empty")
            if self.tokenizer is None:
                raise ValueError("this model has no tokenizer: pass prompts as lists of token ids")
            token_ids = list(self.tokenizer.encode(prompt))
        elif isinstance(prompt, (list, tuple, np.ndarray)):
            token_ids = [int(t) for t in prompt]
        else:
            raise ValueError(
                f"a prompt must be a string or a list of token ids, got {type(prompt).__name__}"
            )
        if not token_ids:
            raise ValueError("the prompt is empty")
        vocab_size = self.model.config.vocab_size
        bad = [t for t in token_ids if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"prompt token ids out of range [0, {vocab_size}): {bad[:5]}")
        if len(token_ids) >= self.limits.max_model_len:
            raise ValueError(
                f"the prompt has {len(token_ids)} tokens; max_model_len is "
                f"{self.limits.max_model_len}, which must leave room for one more"
            )
        return token_ids

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    # --------------------------------------------------------------------------------- steps

    def step(self) -> list[RequestOutput]:
        """Runs one scheduled step; returns the requests that finished in it."""
        scheduled = self.scheduler.schedule()
        # Before the run: the offloads of this step's victims, whose pages the run may reuse;
        # in debug mode the NaN fill of freed pages, too.
        self.kv.flush()
        if not scheduled.entries:
            return []
        prompt_tokens = self._count_step(scheduled)
        start = time.perf_counter()
        arrays = build_step_arrays(scheduled, self.config.page_size, self.limits.max_pages_per_seq)
        next_tokens = np.asarray(self.runner.run(arrays))
        finished = self._postprocess(scheduled.entries, next_tokens)
        self.kv.flush()  # write-through copies of the prefixes this step cached
        kind = "prefill" if prompt_tokens else "decode"
        self.counters[f"{kind}_steps"] += 1
        self.counters[f"{kind}_time_us"] += int(1e6 * (time.perf_counter() - start))
        if self.config.debug:
            self.check_integrity()
        return finished

    def _postprocess(self, entries, next_tokens: np.ndarray) -> list[RequestOutput]:
        now = time.perf_counter()
        finished = []
        for row, (req, num_tokens) in enumerate(entries):
            req.num_computed_tokens += num_tokens
            if not req.prompt_cached and req.num_computed_tokens >= len(req.prompt_token_ids):
                self.kv.cache_computed(req)
                req.prompt_cached = True
            if req.num_computed_tokens < req.num_tokens:
                continue  # a prefill chunk short of the last token: its sample is not used
            req.output_token_ids.append(int(next_tokens[row]))
            self.counters["generated_tokens"] += 1
            req.first_token_time = req.first_token_time or now
            reason = stopping.stop_reason(req, self.limits.max_model_len, self.tokenizer)
            if reason is not None:
                finished.append(self._finish(req, reason))
        return finished

    def _finish(self, req: Request, reason: str) -> RequestOutput:
        req.finish_reason = reason
        req.text = stopping.final_text(req, self.tokenizer)
        self.scheduler.finish(req)
        del self._requests[req.request_id]
        return req.to_output()

    def _count_step(self, scheduled) -> int:
        """Counts a step before it runs; returns how many of its tokens are prompt tokens."""
        c = self.counters
        prompt_tokens = sum(
            max(
                0,
                min(req.num_computed_tokens + n, len(req.prompt_token_ids))
                - req.num_computed_tokens,
            )
            for req, n in scheduled.entries
        )
        c["num_steps"] += 1
        c["computed_tokens"] += scheduled.num_tokens
        c["computed_prompt_tokens"] += prompt_tokens
        c["preemptions"] += scheduled.num_preempted
        return prompt_tokens

    # --------------------------------------------------------------------------- offline API

    def generate(self, prompts, sampling_params=None, use_tqdm: bool = True) -> list[RequestOutput]:
        """Generates for every prompt; returns one output per prompt, in order.

        Args:
          prompts: a string, a list of token ids, or a list of either.
          sampling_params: one `SamplingParams` for all, a list with one per prompt, or None.
          use_tqdm: show a progress bar.

        All prompts are validated before any is queued, so a bad one raises ValueError and
        nothing runs.
        """
        prompts = _as_prompt_list(prompts)
        params = _as_params_list(sampling_params, len(prompts))
        requests = [self._make_request(p, sp, None) for p, sp in zip(prompts, params, strict=True)]
        for req in requests:
            self._requests[req.request_id] = req
            self.scheduler.add(req)
        outputs: dict[str, RequestOutput] = {}
        with tqdm(total=len(requests), disable=not use_tqdm, desc="generate") as bar:
            while self.scheduler.has_unfinished():
                for out in self.step():
                    outputs[out.request_id] = out
                    bar.update(1)
        return [outputs[req.request_id] for req in requests]

    def chat(
        self,
        conversations,
        sampling_params=None,
        *,
        add_generation_prompt: bool = True,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Renders each conversation with the model's chat template and generates a reply.

        Args:
          conversations: one conversation (a list of ``{"role": ..., "content": ...}`` dicts) or
            a list of them. A later turn shares the rendered text of the earlier ones, so its
            prompt hits the pages those turns left in the prefix cache.
          sampling_params: as in `generate`.
          add_generation_prompt: end the rendered prompt with the assistant's header.

        Returns one output per conversation, in order (``prompt`` is the rendered text). As in
        vLLM, the rendered text is tokenized without adding special tokens: the template places
        them.
        """
        texts = [
            self.render_chat(conv, add_generation_prompt)
            for conv in _as_conversations(conversations)
        ]
        prompts = [self.tokenizer.encode(text, add_special_tokens=False) for text in texts]
        outputs = self.generate(prompts, sampling_params, use_tqdm=use_tqdm)
        return [
            dataclasses.replace(out, prompt=text) for out, text in zip(outputs, texts, strict=True)
        ]

    def render_chat(self, messages, add_generation_prompt: bool = True) -> str:
        """One conversation as prompt text, through the tokenizer's Jinja chat template.

        >>> engine.render_chat([{"role": "user", "content": "Hi"}])  # a preset: plain ChatML
        '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
        """
        if self.tokenizer is None or not self.model.chat_template:
            raise ValueError(f"model {self.model.name!r} has no chat template")
        _check_messages(messages)
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    # ------------------------------------------------------------------------------- metrics

    def stats(self) -> dict:
        """Counters since the engine was built (prefix cache, pages, scheduling)."""
        kv, c = self.kv, self.counters
        return {
            "prefix_cache_queried_tokens": kv.queried_tokens,
            "prefix_cache_hit_tokens": kv.hit_tokens,
            "prefix_cache_hit_rate": kv.hit_tokens / kv.queried_tokens
            if kv.queried_tokens
            else 0.0,
            "prefix_cache_host_hit_tokens": kv.host_hit_tokens,
            "computed_tokens": c["computed_tokens"],
            "computed_prompt_tokens": c["computed_prompt_tokens"],
            "generated_tokens": c["generated_tokens"],
            "prefill_steps": c["prefill_steps"],
            "prefill_time_s": c["prefill_time_us"] / 1e6,
            "decode_steps": c["decode_steps"],
            "decode_time_s": c["decode_time_us"] / 1e6,
            "evicted_pages": kv.evicted_pages,
            "preemptions": c["preemptions"],
            "num_steps": c["num_steps"],
            "num_pages": self.limits.num_pages,
            "free_pages": kv.pool.num_free,
            "cached_pages": kv.cache.num_cached_pages,
            "in_use_pages": kv.pool.num_in_use,
            "running": len(self.scheduler.running),
            "waiting": len(self.scheduler.waiting),
            **kv.transfer.stats(),
        }

    def check_integrity(self) -> None:
        """Asserts page accounting: pool and tree consistent, own pages == pool's in-use pages."""
        self.kv.pool.check_integrity()
        self.kv.cache.check_integrity()
        own = [p for r in self.scheduler.running for p in r.own_pages]
        assert len(own) == len(set(own)) == self.kv.pool.num_in_use, "in-use pages leaked"
        waiting_pages = [r for r in self.scheduler.waiting if r.pages]
        assert not waiting_pages, "waiting requests must hold no pages"
        assert all(r.status is Status.RUNNING for r in self.scheduler.running)


def _as_prompt_list(prompts) -> list:
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if prompts and all(isinstance(t, (int, np.integer)) for t in prompts):
        return [prompts]  # one prompt given as token ids
    if not prompts:
        raise ValueError("no prompts given")
    return prompts


def _as_conversations(conversations) -> list[list[dict]]:
    conversations = list(conversations)
    if not conversations:
        raise ValueError("no conversations given")
    if all(isinstance(m, dict) for m in conversations):
        return [conversations]  # one conversation
    return [list(conv) for conv in conversations]


def _check_messages(messages) -> None:
    if not messages:
        raise ValueError("a conversation needs at least one message")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ValueError(f"a message must be a dict with string 'content', got {message!r}")
        if message.get("role") not in ("system", "user", "assistant", "tool"):
            raise ValueError(f"unknown message role {message.get('role')!r}")


def _as_params_list(sampling_params, num_prompts: int) -> list[SamplingParams]:
    if sampling_params is None:
        return [SamplingParams()] * num_prompts
    if isinstance(sampling_params, SamplingParams):
        return [sampling_params] * num_prompts
    if not isinstance(sampling_params, (list, tuple)):
        raise ValueError(
            f"sampling_params must be SamplingParams or a list of them, got "
            f"{type(sampling_params).__name__}"
        )
    params = list(sampling_params)
    if len(params) != num_prompts:
        raise ValueError(f"got {len(params)} sampling_params for {num_prompts} prompts")
    return params
