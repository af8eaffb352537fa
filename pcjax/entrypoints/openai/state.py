"""What the server holds: the engine (loaded in a background thread), its `AsyncEngine`, the
serving logic and the Prometheus metrics, and whether all of it is ready."""

import asyncio
import logging
import threading

from pcjax.config import EngineConfig
from pcjax.entrypoints.openai.args import IN_FLIGHT_PER_SEQ
from pcjax.entrypoints.openai.serving import OpenAIServing, RequestError
from pcjax.metrics import ServingMetrics, StatsLogger

logger = logging.getLogger("pcjax.server")


class ServerState:
    """Loads the engine off the event loop and exposes it once ready.

    Args:
      config: the engine's config.
      served_model_names: names clients may use; the first is reported.
      args: the parsed flags (for /get_server_info).
    """

    def __init__(self, config: EngineConfig, served_model_names: list[str], args=None):
        self.config = config
        self.names = served_model_names
        self.args = args
        self.serving: OpenAIServing | None = None
        self.metrics: ServingMetrics | None = None
        self.load_error: BaseException | None = None
        self.on_fatal = None  # called (from the loader thread) when the engine cannot load
        self._metrics_server = None
        self._async_engine = None
        self._metrics_ready = threading.Event()

    @property
    def ready(self) -> bool:
        return self.serving is not None and self.serving.engine.is_running

    def require_ready(self) -> OpenAIServing:
        if not self.ready:
            raise RequestError("the engine is not ready yet (loading) or has stopped", 503)
        return self.serving

    def start_loading(self, loop: asyncio.AbstractEventLoop) -> None:
        threading.Thread(target=self._load, name="pcjax-load", daemon=True).start()

    def _load(self) -> None:
        from pcjax.engine.async_engine import AsyncEngine
        from pcjax.engine.engine import Engine

        try:
            engine = Engine(config=self.config)
            _warm_up(engine)
            self.metrics = ServingMetrics(self.names[0], cache_config_labels(engine))
            self.metrics.start_from(engine)
            self._metrics_ready.set()
            observers = (self.metrics, StatsLogger(logger.info, _log_interval(self.args)))
            overlap = bool(getattr(self.args, "async_scheduling", False))
            async_engine = AsyncEngine(engine, observers, overlap=overlap)
            async_engine.start()
            self._async_engine = async_engine
            max_in_flight = IN_FLIGHT_PER_SEQ * self.config.max_num_seqs
            self.serving = OpenAIServing(async_engine, self.names, max_in_flight)
            logger.info("engine ready: %s", engine.limits)
        except Exception as exc:  # noqa: BLE001 - reported, and the server stops
            logger.exception("the engine failed to load")
            self.load_error = exc
            if self.on_fatal is not None:
                self.on_fatal()

    def shutdown(self) -> None:
        if self._async_engine is not None:
            self._async_engine.shutdown()
            from pcjax import parallel

            # Other processes, if any: stop them, then leave jax.distributed together (here, as
            # uvicorn ends a SIGTERM'd process by re-raising the signal after this shutdown).
            parallel.stop_followers(self._async_engine.engine)
            parallel.shutdown()

    def start_metrics_server(self, host: str, port: int) -> None:
        """Serves /metrics on its own port (prometheus_client's server thread)."""
        import prometheus_client

        registry = _LateRegistry(self)
        self._metrics_server, _ = prometheus_client.start_http_server(
            port, addr=host, registry=registry
        )

    def stop_metrics_server(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()

    def metrics_text(self) -> bytes:
        import prometheus_client

        if self.metrics is None:
            return b""
        return prometheus_client.generate_latest(self.metrics.registry)


class _LateRegistry:
    """A collector standing for the metrics registry, which exists only once the engine loaded."""

    def __init__(self, state: ServerState):
        self.state = state

    def collect(self):
        if self.state.metrics is None:
            return []
        return self.state.metrics.registry.collect()


def cache_config_labels(engine) -> dict:
    cfg = engine.config
    return {
        "block_size": cfg.page_size,
        "num_gpu_blocks": engine.limits.num_pages - 1,
        "enable_prefix_caching": cfg.enable_prefix_caching,
        "swap_space_gb": cfg.swap_space,
        "eviction_policy": cfg.eviction_policy,
        "write_policy": cfg.write_policy,
        "dtype": cfg.dtype,
    }


def _warm_up(engine) -> None:
    """Compiles the programs of a short prefill and of decode steps, then empties the cache."""
    from pcjax.sampling import SamplingParams

    prompt = [
        min(i + 1, engine.model.config.vocab_size - 1) for i in range(engine.config.page_size + 3)
    ]
    engine.generate(
        prompt, SamplingParams(temperature=0, max_tokens=3, ignore_eos=True), use_tqdm=False
    )
    engine.reset_prefix_cache()


def _log_interval(args) -> float:
    return getattr(args, "log_interval", 5.0) if args is not None else 5.0
