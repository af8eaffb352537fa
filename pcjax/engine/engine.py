"""`Engine`: offline generation with prefix caching (vLLM's `LLM` shape).

A request's way through it: tokenize -> radix match (>= 1 token left to compute) -> lock the
matched path -> allocate pages (evicting by policy when short) -> jitted prefill over cached + new
tokens (in chunks) -> the prompt's pages go into the tree -> decode loop -> the tokens whose KV was
written go into the tree, duplicate and tail pages are freed -> unlock.
"""

import dataclasses
import itertools
import logging

import jax
from tqdm.auto import tqdm

from pcjax import models, parallel
from pcjax.cache import kv_pages
from pcjax.config import EngineConfig
from pcjax.engine import inputs
from pcjax.engine.components import build_cache_components, resolve_limits
from pcjax.engine.detokenizer import IncrementalDetokenizer
from pcjax.engine.host_transfers import HostTransfers
from pcjax.engine.kv_manager import KVManager
from pcjax.engine.outputs import RequestOutput
from pcjax.engine.request import Request, RequestGroup, Status
from pcjax.engine.runner import ModelRunner
from pcjax.engine.scheduler import Scheduler
from pcjax.engine.steps import StepMixin
from pcjax.kernels import resolve_attention_impl
from pcjax.metrics import Counters
from pcjax.sampling import SamplingParams

logger = logging.getLogger(__name__)


class Engine(StepMixin):
    """Generates text with a paged KV cache shared through a radix prefix tree.

    ``Engine(model="pcjax-small", enable_prefix_caching=True, ...)`` takes the fields of
    `EngineConfig` as keywords (or a ready `config=`). Invalid input to `generate` / `add_request`
    raises `ValueError` naming the problem and leaves the engine as it was.

    With ``tensor_parallel_size`` or ``data_parallel_size`` above 1 (or under ``jax.distributed``
    with several processes) it runs on a ``(data, model)`` mesh (`pcjax.parallel`); ``mesh=``
    gives a ready one of that shape (a ``(1, 1)`` mesh runs the sharded path on one device).
    """

    def __init__(
        self,
        model: str = "pcjax-small",
        *,
        config: EngineConfig | None = None,
        mesh=None,
        **kwargs,
    ):
        self.config = config if config is not None else EngineConfig(model=model, **kwargs)
        cfg = self.config
        self.mesh = parallel.resolve_mesh(cfg, mesh)
        with parallel.loading_device(self.mesh):
            self.model = models.load(cfg.model, dtype=cfg.dtype)
        self.tokenizer = self.model.tokenizer
        self.attention_impl = resolve_attention_impl(cfg.attention_impl, jax.default_backend())
        if self.mesh is None:
            self._build_single_device()
        else:
            parts = parallel.build_parts(cfg, self.model, self.mesh, self.attention_impl)
            self.limits, self.kv, self.scheduler, self.runner = parts
        self.counters = Counters()
        self._ids = itertools.count()
        self._num_seeded = 0
        self._requests: dict[str, RequestGroup] = {}  # unfinished requests by id
        self._touched: dict[str, RequestGroup] = {}  # groups with news since the last report

    def _build_single_device(self) -> None:
        cfg, mc = self.config, self.model.config
        self.limits = resolve_limits(cfg, mc)
        pool, cache = build_cache_components(cfg, self.limits.num_pages, mc)
        self.kv = KVManager(pool, cache, cfg.page_size, caching=cfg.enable_prefix_caching)
        self.scheduler = Scheduler.from_config(self.kv, cfg, self.limits.max_num_batched_tokens)
        self.runner = ModelRunner(
            self.model.graphdef, self.model.params, self._allocate_cache(), self.attention_impl
        )
        self.kv.transfer = HostTransfers(
            self.runner, pool, cache.host_pool, mc, cfg.page_size, cfg.dtype, cfg.debug
        )

    def _allocate_cache(self):
        cfg, mc = self.config, self.model.config
        return kv_pages.allocate_kv_cache(
            mc.num_layers,
            self.limits.num_pages,
            cfg.page_size,
            mc.num_kv_heads,
            mc.head_dim,
            cfg.dtype,
            fill_value=float("nan") if cfg.debug else 0.0,
        )

    # ----------------------------------------------------------------------------- requests

    def add_request(
        self,
        prompt,
        sampling_params: SamplingParams | None = None,
        request_id: str | None = None,
    ) -> str:
        """Queues one request (a prompt in any form of `pcjax.engine.inputs`); returns its id.

        Raises ValueError for invalid input, leaving the engine as it was.
        """
        group = self._make_group(prompt, sampling_params or SamplingParams(), request_id)
        self._submit(group)
        return group.request_id

    def _submit(self, group: RequestGroup) -> None:
        self._requests[group.request_id] = group
        for child in group.children:
            self.scheduler.add(child)

    def _make_group(self, prompt, params: SamplingParams, request_id, output_kind=None):
        if not isinstance(params, SamplingParams):
            raise ValueError(f"sampling_params must be SamplingParams, got {type(params).__name__}")
        parsed = inputs.parse_prompt(
            prompt, self.tokenizer, self.model.config.vocab_size, self.limits.max_model_len
        )
        request_id = str(next(self._ids)) if request_id is None else str(request_id)
        if request_id in self._requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids.update(self.model.eos_token_ids)
        group = RequestGroup(
            request_id=request_id,
            prompt=parsed.text,
            prompt_token_ids=parsed.token_ids,
            output_kind=output_kind or params.output_kind,
            children=[],
        )
        base_seed = params.seed if params.seed is not None else None
        for i in range(params.n):
            seed = self._default_seed() if base_seed is None else (base_seed + i) % 2**32
            group.children.append(
                Request(
                    request_id=request_id if params.n == 1 else f"{i}_{request_id}",
                    prompt_token_ids=parsed.token_ids,
                    params=params,
                    seed=seed,
                    stop_token_ids=frozenset(stop_ids),
                    prompt=parsed.text,
                    cache_salt=parsed.cache_salt,
                    index=i,
                    group=group,
                    detokenizer=IncrementalDetokenizer(self.tokenizer, params.stop),
                    arrival_time=group.arrival_time,
                    logprobs=None if params.logprobs is None else [],
                )
            )
        return group

    def _default_seed(self) -> int:
        self._num_seeded += 1
        return (self.config.seed * 1_000_003 + self._num_seeded) % 2**32

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    def abort(self, request_ids) -> list[RequestOutput]:
        """Ends requests now (between steps), waiting or running; unknown ids are ignored.

        Their pages go back as at a normal finish: computed full pages to the prefix cache, the
        rest freed. Returns the aborted requests' last outputs (finish_reason "abort").
        """
        ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        outputs = []
        for request_id in ids:
            group = self._requests.get(str(request_id))
            if group is None:
                continue
            for child in group.children:
                if child.finish_reason is None:
                    self._finish(child, "abort")
            outputs.append(group.to_output())
        self._touched.clear()  # what the aborted groups had pending was just reported
        return outputs

    # --------------------------------------------------------------------------------- steps

    def step(self) -> list[RequestOutput]:
        """Runs one scheduled step; returns what it has to report, by each request's output kind:
        "final" requests when they finish, "cumulative" and "delta" ones whenever a sample gained
        a token or finished (see `RequestOutput.finished`).

        An exception inside the step fails only the step's requests (finish_reason "error", their
        pages returned); the engine goes on with the others.
        """
        return self.complete_step(self.begin_step())

    # --------------------------------------------------------------------------- offline API

    def generate(self, prompts, sampling_params=None, use_tqdm: bool = True) -> list[RequestOutput]:
        """Generates for every prompt; returns one finished output per prompt, in order.

        Args:
          prompts: a prompt (string, token ids or dict, see `pcjax.engine.inputs`) or a list.
          sampling_params: one `SamplingParams` for all, a list with one per prompt, or None.
          use_tqdm: show a progress bar.

        All prompts are validated before any is queued, so a bad one raises ValueError and
        nothing runs.
        """
        prompts = inputs.as_prompt_list(prompts)
        params = inputs.as_params_list(sampling_params, len(prompts))
        groups = [
            self._make_group(p, sp, None, output_kind="final")
            for p, sp in zip(prompts, params, strict=True)
        ]
        for group in groups:
            self._submit(group)
        outputs: dict[str, RequestOutput] = {}
        with tqdm(total=len(groups), disable=not use_tqdm, desc="generate") as bar:
            while self.scheduler.has_unfinished():
                for out in self.step():
                    outputs[out.request_id] = out
                    bar.update(1)
        return [outputs[group.request_id] for group in groups]

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
            for conv in inputs.as_conversations(conversations)
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
        inputs.check_messages(messages)
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    # ------------------------------------------------------------------------------- metrics

    def stats(self) -> dict:
        """Counters since the engine was built (prefix cache, pages, scheduling); with several
        data-parallel replicas, sums over them and ``"replicas"``: each one's own."""
        c = self.counters
        return {
            **self.kv.stats(),
            "computed_tokens": c["computed_tokens"],
            "computed_prompt_tokens": c["computed_prompt_tokens"],
            "generated_tokens": c["generated_tokens"],
            "prefill_steps": c["prefill_steps"],
            "prefill_time_s": c["prefill_time_us"] / 1e6,
            "decode_steps": c["decode_steps"],
            "decode_time_s": c["decode_time_us"] / 1e6,
            "preemptions": c["preemptions"],
            "num_steps": c["num_steps"],
            # where a step's time goes: host work before dispatch (schedule, build, dispatch,
            # advance) and the wait for the device's result; the rest is post-processing
            "host_begin_s": c["host_begin_us"] / 1e6,
            "device_wait_s": c["device_wait_us"] / 1e6,
            "running": len(self.scheduler.running),
            "waiting": len(self.scheduler.waiting),
        }

    def reset_prefix_cache(self) -> int:
        """Drops every cached page no running request holds (device and host tier); returns how
        many device pages were dropped. Later requests recompute their prefixes."""
        dropped = self.kv.reset_cache()
        self.kv.flush()
        return dropped

    def check_integrity(self) -> None:
        """Asserts page accounting: pool and tree consistent, own pages == pool's in-use pages
        (on every replica)."""
        self.kv.check_integrity(self.scheduler.running)
        waiting_pages = [r for r in self.scheduler.waiting if r.pages]
        assert not waiting_pages, "waiting requests must hold no pages"
        assert all(r.status is Status.RUNNING for r in self.scheduler.running)
