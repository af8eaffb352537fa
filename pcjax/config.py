"""Engine configuration: one frozen, validated dataclass. No absl, no environment variables."""

import dataclasses

EVICTION_POLICIES = (
    "lru",
    "fifo",
    "lfu",
    "slru",
    "s3fifo",
    "gdsf",
    "deadline",
    "learned_hold",
    "adaptive",
)
# Attention implementations `pcjax.kernels` dispatches on by name; "auto" picks one per platform.
KERNEL_IMPLS = ("reference", "pallas", "pallas_tpu", "pallas_gpu", "cpu", "cpu_native", "cpu_xla")
ATTENTION_IMPLS = ("auto", *KERNEL_IMPLS)
WRITE_POLICIES = ("write_back", "write_through")
SCHEDULING_POLICIES = ("fcfs", "lpm")  # `pcjax.engine.scheduler`
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """What an `Engine` is built with. Names follow vLLM's offline `LLM(...)` where they overlap.

    Attributes:
      model: a built-in name (presets with random weights "pcjax-tiny", "pcjax-small"; the
        trained "smollm2-135m"), a ``.gguf`` file, or a local Hugging Face checkpoint directory
        (config.json + safetensors + tokenizer files); see `pcjax.models.load`.
      enable_prefix_caching: keep the KV of finished prompts in the radix tree for reuse.
      page_size: tokens per KV page (P). Any positive integer; 16 is the default.
      num_pages: device KV pages (NP), the null page 0 included. None: derived from
        `kv_cache_memory_gb`, or from what `max_num_seqs` sequences of `max_model_len` need.
      kv_cache_memory_gb: device memory budget for the KV pages, when `num_pages` is None.
      max_num_seqs: most sequences running at once (decode batch size).
      max_model_len: longest prompt + generation; None: the model's max position embeddings,
        capped at 4096.
      max_num_batched_tokens: most tokens computed in one step (prefill chunk budget);
        None: max(2048, max_num_seqs).
      eviction_policy: how cached device pages are chosen for eviction.
      scheduling_policy: order in which waiting requests are admitted: "fcfs" (arrival order) or
        "lpm" (longest cached prefix first, SGLang's cache-aware policy; see
        `pcjax.engine.scheduler`).
      scheduling_aging_steps: under "lpm", a request that has waited this many steps goes before
        every younger one, so none waits without limit behind a stream of cache hits.
      dtype: activation and KV cache dtype.
      seed: seeds sampling of requests that bring no seed of their own.
      attention_impl: "reference" (plain jnp), "pallas" (the platform's Pallas kernel; interpret
        mode on CPU), "pallas_tpu" / "pallas_gpu" (one kernel by name), "cpu_native" (a C++ XLA
        FFI kernel, built on first use), "cpu_xla" (page-blocked jnp decode + the interpreted TPU
        kernel for prefill steps), "cpu" (cpu_native where it builds, else cpu_xla) or "auto"
        (the platform's fastest: pallas on TPU and GPU, cpu on CPU; see `pcjax.kernels`).
      swap_space: GB of host memory for the second cache tier, pages evicted from the device go
        there and host hits are loaded back (0 disables it; so does prefix caching off).
      write_policy: when the host tier receives pages: on device eviction ("write_back") or when a
        prefix is first cached ("write_through"; pages the host could not take then still go on
        eviction).
      debug: fill freed pages with NaN and check cache integrity after every step (slow).
      tensor_parallel_size: T, devices one replica's weights and KV heads are split over (the
        ``"model"`` axis of the mesh; see `pcjax.parallel`).
      data_parallel_size: D, replicas of the model, each with its own KV pages, page pool and
        radix tree (the ``"data"`` axis). The engine runs on D * T devices when that is > 1;
        page and memory budgets (``num_pages``, ``kv_cache_memory_gb``, ``swap_space``) are then
        per replica (pages) and per device (GB), as in vLLM.
    """

    model: str = "pcjax-small"
    enable_prefix_caching: bool = True
    page_size: int = 16
    num_pages: int | None = None
    kv_cache_memory_gb: float | None = None
    max_num_seqs: int = 32
    max_model_len: int | None = None
    max_num_batched_tokens: int | None = None
    eviction_policy: str = "lru"
    scheduling_policy: str = "fcfs"
    scheduling_aging_steps: int = 32
    dtype: str = "float32"
    seed: int = 0
    attention_impl: str = "auto"
    swap_space: float = 0.0
    write_policy: str = "write_back"
    debug: bool = False
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1

    def __post_init__(self):
        _require(isinstance(self.model, str) and self.model, "model must be a non-empty string")
        _require_positive("page_size", self.page_size)
        _require_positive("max_num_seqs", self.max_num_seqs)
        if self.num_pages is not None:
            _require(
                isinstance(self.num_pages, int) and self.num_pages >= 2,
                f"num_pages must be an int >= 2 (page 0 is the null page), got {self.num_pages!r}",
            )
        if self.kv_cache_memory_gb is not None:
            _require(self.kv_cache_memory_gb > 0, "kv_cache_memory_gb must be > 0")
        if self.max_model_len is not None:
            _require_positive("max_model_len", self.max_model_len)
        if self.max_num_batched_tokens is not None:
            _require_positive("max_num_batched_tokens", self.max_num_batched_tokens)
        _require_choice("eviction_policy", self.eviction_policy, EVICTION_POLICIES)
        _require_choice("scheduling_policy", self.scheduling_policy, SCHEDULING_POLICIES)
        _require_positive("scheduling_aging_steps", self.scheduling_aging_steps)
        _require_choice("attention_impl", self.attention_impl, ATTENTION_IMPLS)
        _require_choice("write_policy", self.write_policy, WRITE_POLICIES)
        _require_choice("dtype", self.dtype, DTYPES)
        _require(self.swap_space >= 0, f"swap_space must be >= 0 GB, got {self.swap_space!r}")
        _require_positive("tensor_parallel_size", self.tensor_parallel_size)
        _require_positive("data_parallel_size", self.data_parallel_size)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _require_positive(name: str, value) -> None:
    _require(isinstance(value, int) and value > 0, f"{name} must be a positive int, got {value!r}")


def _require_choice(name: str, value, choices) -> None:
    _require(value in choices, f"{name} must be one of {choices}, got {value!r}")
