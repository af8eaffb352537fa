"""Counters and summaries shared by the engine, the benchmarks and the notebooks, and the
server's Prometheus metrics and periodic log line (`AsyncEngine` observers)."""

import collections
import math
import time
from collections.abc import Callable, Iterable


class Counters(collections.Counter):
    """Named monotonic counts (`counters["evicted_pages"] += n`); missing names read as 0."""

    def ratio(self, numerator: str, denominator: str) -> float:
        """``numerator / denominator``, 0.0 when the denominator is 0."""
        den = self[denominator]
        return self[numerator] / den if den else 0.0


class TransferCounters(Counters):
    """Page copies between the device cache and the host tier, per direction (``"out"``, ``"in"``).

    Example::

        c = TransferCounters()
        c.record("out", 3, start=time.perf_counter() - 0.002)  # one call moved 3 pages
        c.stats(page_bytes=1024, host_pool=None)["swapped_out_bytes"]  # -> 3072
    """

    def record(self, direction: str, num_pages: int, start: float) -> None:
        """Counts one call that moved ``num_pages`` pages, begun at ``perf_counter()`` ``start``."""
        if not num_pages:
            return
        self[f"swap_{direction}_calls"] += 1
        self[f"swapped_{direction}_pages"] += num_pages
        self[f"swap_{direction}_time_us"] += int(1e6 * (time.perf_counter() - start))

    def stats(self, page_bytes: int, host_pool) -> dict:
        """Pages, bytes, calls and seconds each way, and the host store's occupancy.

        Args:
          page_bytes: bytes of one page over all layers.
          host_pool: the host tier's pool (``num_cached``, ``num_pages``), or None without one.
        """
        return {
            "swapped_out_pages": self["swapped_out_pages"],
            "swapped_in_pages": self["swapped_in_pages"],
            "swapped_out_bytes": self["swapped_out_pages"] * page_bytes,
            "swapped_in_bytes": self["swapped_in_pages"] * page_bytes,
            "swap_out_calls": self["swap_out_calls"],
            "swap_in_calls": self["swap_in_calls"],
            "swap_out_time_s": self["swap_out_time_us"] / 1e6,
            "swap_in_time_s": self["swap_in_time_us"] / 1e6,
            "host_pages": host_pool.num_cached if host_pool else 0,
            "host_bytes_in_use": host_pool.num_cached * page_bytes if host_pool else 0,
            "host_bytes_capacity": host_pool.num_pages * page_bytes if host_pool else 0,
        }


def summarize(values: Iterable[float]) -> dict[str, float]:
    """Count, mean and the 50/90/99th percentiles (nearest rank) of `values`; {} when empty."""
    data = sorted(values)
    if not data:
        return {}

    def rank(q: float) -> float:
        return data[max(0, math.ceil(q * len(data)) - 1)]

    return {
        "count": len(data),
        "mean": sum(data) / len(data),
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "max": data[-1],
    }


# ------------------------------------------------------------------------------ Prometheus

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
# Engine stats counters -> Prometheus counters (name without "pcjax:" and "_total", labels).
_COUNTERS_FROM_STATS = {
    "prefix_cache_queried_tokens": ("prefix_cache_queries", {}),
    "prefix_cache_hit_tokens": ("prefix_cache_hits", {}),
    "prefix_cache_host_hit_tokens": ("host_prefix_cache_hits", {}),
    "generated_tokens": ("generation_tokens", {}),
    "preemptions": ("num_preemptions", {}),
    "swapped_out_pages": ("swapped_pages", {"direction": "out"}),
    "swapped_in_pages": ("swapped_pages", {"direction": "in"}),
}
_COUNTER_HELP = {
    "prefix_cache_queries": "Prompt tokens looked up in the prefix cache.",
    "prefix_cache_hits": "Prompt tokens served from the prefix cache (device and host tier).",
    "host_prefix_cache_hits": "Prompt tokens loaded back from the host (swap) tier.",
    "prompt_tokens": "Prompt tokens of requests that produced their first token.",
    "generation_tokens": "Generated tokens.",
    "num_preemptions": "Requests preempted (their pages reclaimed) to make room.",
    "swapped_pages": "KV pages copied between device and host, by direction.",
    "request_success": "Finished requests, by finish reason.",
}


class ServingMetrics:
    """vLLM-style Prometheus metrics with a ``pcjax:`` prefix and a ``model_name`` label.

    An `AsyncEngine` observer: call it with each step's outputs (output_kind "delta") and the
    engine. Counters follow the engine's own counters (`Engine.stats`), so they also count
    requests that did not come through the server; latencies are observed from the outputs.
    Metrics live in their own `CollectorRegistry` (``registry``), not the process-global one.
    """

    def __init__(self, model_name: str, cache_config: dict, registry=None):
        import prometheus_client as prom

        self.registry = registry if registry is not None else prom.CollectorRegistry()
        self.model_name = model_name
        self._seen: dict[str, float] = {}  # last counter values taken from the engine stats
        self._last_token: dict[tuple[str, int], float] = {}  # (request, sample) -> time
        r, name = self.registry, "model_name"
        self._counters = {
            short: prom.Counter(f"pcjax:{short}", help_text, _labels(short), registry=r)
            for short, help_text in _COUNTER_HELP.items()
        }
        gauge = lambda short, help_text, extra=(): prom.Gauge(  # noqa: E731
            f"pcjax:{short}", help_text, [name, *extra], registry=r
        )
        self.running = gauge("num_requests_running", "Sequences running (n > 1 counts each).")
        self.waiting = gauge("num_requests_waiting", "Sequences waiting to be admitted.")
        self.kv_usage = gauge("kv_cache_usage_perc", "Share of KV pages held by running requests.")
        info = gauge("cache_config_info", "The KV cache configuration.", sorted(cache_config))
        info.labels(model_name, *(str(cache_config[k]) for k in sorted(cache_config))).set(1)
        hist = lambda short, help_text: prom.Histogram(  # noqa: E731
            f"pcjax:{short}", help_text, [name], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.ttft = hist("time_to_first_token_seconds", "Arrival to first token.")
        self.e2e = hist("e2e_request_latency_seconds", "Arrival to finish.")
        self.itl = hist("inter_token_latency_seconds", "Between consecutive tokens of a sample.")
        self.queue_time = hist("request_queue_time_seconds", "Arrival to first scheduled.")

    def start_from(self, engine) -> None:
        """Counts only what happens from now on (e.g. not the server's warm-up)."""
        stats = engine.stats()
        self._seen = {key: stats[key] for key in _COUNTERS_FROM_STATS}

    def __call__(self, outputs: list, engine) -> None:
        stats = engine.stats()
        self._follow_stats(stats)
        m = self.model_name
        self.running.labels(m).set(stats["running"])
        self.waiting.labels(m).set(stats["waiting"])
        self.kv_usage.labels(m).set(stats["kv_cache_usage"])
        for out in outputs:
            self._observe_output(out)

    def _follow_stats(self, stats: dict) -> None:
        for key, (short, labels) in _COUNTERS_FROM_STATS.items():
            delta = stats[key] - self._seen.get(key, 0)
            self._seen[key] = stats[key]
            if delta > 0:
                self._counters[short].labels(model_name=self.model_name, **labels).inc(delta)

    def _observe_output(self, out) -> None:
        m, now = self.model_name, time.perf_counter()
        for sample in out.outputs:
            key = (out.request_id, sample.index)
            if sample.token_ids:
                last = self._last_token.get(key)
                if last is None and sample.index == 0:
                    self._first_token(out)
                elif last is not None:
                    self.itl.labels(m).observe((now - last) / len(sample.token_ids))
                self._last_token[key] = now
            if sample.finished:
                self._last_token.pop(key, None)
        if out.finished:
            reason = out.finish_reason or "stop"
            self._counters["request_success"].labels(model_name=m, finished_reason=reason).inc()
            self.e2e.labels(m).observe(out.latency_s)

    def _first_token(self, out) -> None:
        m, metrics = self.model_name, out.metrics
        self._counters["prompt_tokens"].labels(model_name=m).inc(len(out.prompt_token_ids))
        if metrics.time_to_first_token is not None:
            self.ttft.labels(m).observe(metrics.time_to_first_token)
        if metrics.time_in_queue is not None:
            self.queue_time.labels(m).observe(metrics.time_in_queue)


def _labels(short: str) -> list[str]:
    if short == "swapped_pages":
        return ["model_name", "direction"]
    if short == "request_success":
        return ["model_name", "finished_reason"]
    return ["model_name"]


class StatsLogger:
    """Logs one line every ``interval_s`` seconds while the engine is busy: token throughput,
    running / waiting sequences, KV usage, and the prefix-cache hit rate over the interval and
    since start. An `AsyncEngine` observer, like `ServingMetrics`."""

    def __init__(self, log: Callable[[str], None], interval_s: float = 5.0):
        self.log = log
        self.interval_s = interval_s
        self._last_time = time.perf_counter()
        self._last: dict = {}

    def __call__(self, outputs: list, engine) -> None:
        now = time.perf_counter()
        if now - self._last_time < self.interval_s:
            return
        stats = engine.stats()
        last, dt = self._last, now - self._last_time
        self._last, self._last_time = stats, now
        if last and stats["num_steps"] == last["num_steps"]:
            return  # idle since the last line
        diff = {k: stats[k] - last.get(k, 0) for k in _LOGGED_COUNTERS}
        interval_rate = _rate(diff["prefix_cache_hit_tokens"], diff["prefix_cache_queried_tokens"])
        self.log(
            f"prompt throughput: {diff['computed_prompt_tokens'] / dt:.1f} tokens/s, generation "
            f"throughput: {diff['generated_tokens'] / dt:.1f} tokens/s, running: "
            f"{stats['running']}, waiting: {stats['waiting']}, KV cache usage: "
            f"{100 * stats['kv_cache_usage']:.1f}%, prefix cache hit rate: "
            f"{100 * interval_rate:.1f}% (interval), {100 * stats['prefix_cache_hit_rate']:.1f}% "
            "(since start)"
        )


_LOGGED_COUNTERS = (
    "computed_prompt_tokens",
    "generated_tokens",
    "prefix_cache_hit_tokens",
    "prefix_cache_queried_tokens",
)


def _rate(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0
