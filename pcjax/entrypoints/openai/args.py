"""Command-line flags of the server (vLLM's names), checked at start with clear messages."""

import argparse
import socket

from pcjax.config import (
    ATTENTION_IMPLS,
    DTYPES,
    EVICTION_POLICIES,
    SCHEDULING_POLICIES,
    WRITE_POLICIES,
    EngineConfig,
)

# Sequences (n per request) the server admits, queued and running, per --max-num-seqs slot.
IN_FLIGHT_PER_SEQ = 4


def add_server_args(parser: argparse.ArgumentParser, *, positional_model: bool = False) -> None:
    """Adds the server's flags (``positional_model``: MODEL is positional, as `pcjax serve`)."""
    if positional_model:
        parser.add_argument("model", help="built-in preset name or local HF checkpoint directory")
    else:
        parser.add_argument("--model", default="pcjax-small", help="preset or HF checkpoint dir")
    a = parser.add_argument
    a("--served-model-name", nargs="+", default=None, help="names clients use (default: --model)")
    a("--host", default="127.0.0.1", help="address to listen on")
    a("--port", type=int, default=8000, help="HTTP port of the API")
    a("--metrics-port", type=int, default=None, help="extra port serving only /metrics")
    a("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    a("--swap-space", type=float, default=0.0, help="GB of host memory for the host cache tier")
    a("--max-model-len", type=int, default=None)
    a(
        "--max-num-seqs",
        type=int,
        default=32,
        help=f"sequences running at once; up to {IN_FLIGHT_PER_SEQ}x as many are admitted "
        "(queued + running), beyond that requests get HTTP 429",
    )
    a("--max-num-batched-tokens", type=int, default=None)
    a("--block-size", type=int, default=16, help="tokens per KV page")
    a("--num-pages", type=int, default=None, help="device KV pages (page 0 included)")
    a("--kv-cache-memory-gb", type=float, default=None, help="device KV budget when no --num-pages")
    a("--eviction-policy", default="lru", choices=EVICTION_POLICIES)
    a("--write-policy", default="write_back", choices=WRITE_POLICIES)
    a(
        "--scheduling-policy",
        default="fcfs",
        choices=SCHEDULING_POLICIES,
        help="admission order: fcfs, or lpm (longest cached prefix first, with aging)",
    )
    a(
        "--scheduling-aging-steps",
        type=int,
        default=32,
        help="under lpm, steps after which a waiting request goes first",
    )
    a("--dtype", default="float32", choices=DTYPES)
    a("--attention-impl", default="auto", choices=ATTENTION_IMPLS)
    a("--seed", type=int, default=0)
    a("--tensor-parallel-size", "-tp", type=int, default=1, help="devices per replica (T)")
    a("--data-parallel-size", "-dp", type=int, default=1, help="replicas of the model (D)")
    # Several processes (hosts) serving one engine: process 0 answers HTTP, the others follow it.
    # The underscore spellings are what `python -m pcjax.parallel.launch` appends.
    a("--coordinator-address", "--coordinator_address", default=None, help="host:port of 0")
    a("--num-processes", "--num_processes", type=int, default=1, help="processes of the engine")
    a("--process-id", "--process_id", type=int, default=0, help="this one (0: the HTTP server)")
    a("--num-cpu-devices", "--num_cpu_devices", type=int, default=None, help="simulated (tests)")
    a("--log-interval", type=float, default=5.0, help="seconds between stats log lines")
    a(
        "--async-scheduling",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="prepare and dispatch step k+1 before waiting for step k (overlap scheduling)",
    )
    unused = "accepted for the reference deployment's command line; this single-process server "
    a("--engine-worker-queue-port", type=int, default=None, help=unused + "does not use it")
    a("--cache-queue-port", type=int, default=None, help=unused + "does not use it")


def engine_config(args: argparse.Namespace) -> EngineConfig:
    """The `EngineConfig` the flags describe (ValueError with the config's message if bad)."""
    return EngineConfig(
        model=args.model,
        enable_prefix_caching=args.enable_prefix_caching,
        page_size=args.block_size,
        num_pages=args.num_pages,
        kv_cache_memory_gb=args.kv_cache_memory_gb,
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len,
        max_num_batched_tokens=args.max_num_batched_tokens,
        eviction_policy=args.eviction_policy,
        scheduling_policy=args.scheduling_policy,
        scheduling_aging_steps=args.scheduling_aging_steps,
        dtype=args.dtype,
        seed=args.seed,
        attention_impl=args.attention_impl,
        swap_space=args.swap_space,
        write_policy=args.write_policy,
        tensor_parallel_size=args.tensor_parallel_size,
        data_parallel_size=args.data_parallel_size,
    )


def check_args(args: argparse.Namespace) -> EngineConfig:
    """Checks what can be checked before loading the model; returns the engine config.

    Raises ValueError naming the problem: bad values, ports in use, a swap space larger than
    the machine's free memory. The model name goes to `Engine(model=...)` as it is; a name the
    engine does not know fails when the engine loads.
    """
    cfg = engine_config(args)
    if args.num_processes > 1 and not args.coordinator_address:
        raise ValueError("--num-processes > 1 needs --coordinator-address (host:port)")
    if not 0 <= args.process_id < args.num_processes:
        raise ValueError(f"--process-id {args.process_id} outside [0, {args.num_processes})")
    if args.process_id > 0:
        return cfg  # a follower listens on nothing
    available = _available_memory_gb()
    if available is not None and args.swap_space > available:
        raise ValueError(
            f"--swap-space {args.swap_space} GB is more than this machine's available memory "
            f"({available:.1f} GB)"
        )
    ports = [args.port] + (
        [args.metrics_port] if args.metrics_port not in (None, args.port) else []
    )
    for port in ports:
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is out of range")
        check_port_free(args.host, port)
    if args.log_interval <= 0:
        raise ValueError("--log-interval must be > 0")
    return cfg


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


def _available_memory_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        return None
    return None
