"""Runs a benchmark spec through vLLM's CPU backend in its own venv and returns the measurements.

pcjax (Python 3.12, jax) and vLLM (Python 3.11, torch) cannot share an interpreter, so the vLLM
side runs as a subprocess: this client checks the spec, writes it to a temporary file, starts
`vllm_runner.py` with the peer venv's python and reads back the result JSON. Standard library
only; importing it imports neither vLLM nor jax.

    from experiments.peers import vllm_peer

    python = vllm_peer.default_vllm_python()          # .peers/vllm/bin/python, or None
    spec = vllm_peer.make_spec(model_dir, passes=[...], enable_prefix_caching=True)
    result = vllm_peer.run_vllm(python, spec, timeout_s=600) if python else None
    if result is not None:
        timed = vllm_peer.find_pass(result, "timed")

`run_vllm` returns None, after printing why, when the interpreter is missing or has no vllm (the
benchmark then reports pcjax alone). It raises `VllmPeerError` when vLLM itself fails or runs past
the timeout. Build the venv with `bash experiments/peers/setup_vllm_cpu.sh` (into `.peers/vllm`).

Result (JSON object):

    ok                 true
    peer, device       "vllm", "cpu"
    versions           {"vllm", "torch", "numpy", "python"}
    host               {"platform", "processor", "cpu_count", "affinity"}
    env                the VLLM_* / OMP_* / TORCH* ... variables after importing vllm (which
                       sets a few itself, e.g. TORCHINDUCTOR_COMPILE_THREADS)
    spec               the spec with defaults filled in, without its prompts
    engine_args        the keyword arguments given to vllm.LLM
    adjustments        [str]: where the engine runs with other settings than the spec asked
                       (vLLM's CPU attention needs block_size % 32 == 0: 16 becomes 32)
    effective_config   what vLLM settled on: block_size, enable_prefix_caching,
                       max_num_batched_tokens, enable_chunked_prefill, compilation_mode, ...
    import_s           seconds to import torch + vllm in the runner
    engine_start_s     seconds in vllm.LLM(...): weights, torch.compile, KV-cache allocation
    ttft_source        where TTFT comes from
    passes             [pass], in spec order, each one `LLM.generate` call:
        name, max_tokens, num_requests, prompt_tokens, generated_tokens
        wall_s                 seconds in `generate` (all requests arrive at its start)
        cached_tokens          sum of the requests' num_cached_tokens
        reset_prefix_cache_before  true/false: LLM.reset_prefix_cache() ran before this pass
                               and succeeded or not; null: not called (first pass, or disabled)
        prefix_cache           vLLM's own counters over the pass: {"queries", "hits",
                               "hit_rate"} in prompt tokens (null rate when nothing was queried)
        cpu_s                  CPU seconds vLLM's processes used in the pass; cpu_s / wall_s
                               near the core count means vLLM had the machine to itself
        load_avg_1m            {"before", "after"}: the machine's 1-minute load average
        ttft_s                 {"n", "mean", "min", "p50", "p90", "p99", "max"} or null
        decode_step_s          the same summary over each request's decode_s / (tokens - 1)
        requests               [request], in prompt order:
            prompt_tokens, num_cached_tokens, token_ids, finish_reason
            ttft_s             first token minus this request's arrival (vLLM's metrics)
            ttft_from_start_s  first token minus the start of `generate`
            arrival_offset_s   arrival minus the start of `generate`
            queue_s, prefill_s, decode_s   waiting, scheduled-to-first-token and
                               first-to-last-token seconds (engine-core clock)
    client             added here: {"python", "runner_wall_s", "env_overrides", "log_path"}
"""

import collections
import contextlib
import dataclasses
import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from experiments.peers import vllm_runner

SETUP_HINT = "build it with bash experiments/peers/setup_vllm_cpu.sh .peers/vllm"
DEFAULT_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "2",  # GiB of KV cache; vLLM's default takes far more memory
    "VLLM_CPU_OMP_THREADS_BIND": "0-1",  # both cores ("all" is rejected by vLLM)
    "PYTHONUNBUFFERED": "1",  # so the log streams line by line
}
DROPPED_ENV = ("PYTHONPATH", "PYTHONHOME")  # pcjax's paths must not leak into the 3.11 venv
LOG_TAIL_LINES = 40


class VllmPeerError(RuntimeError):
    """vLLM ran but failed, or ran past its timeout; the message quotes its log's error lines."""


def repo_root() -> pathlib.Path:
    """The repository (or worktree) root this file belongs to."""
    return pathlib.Path(__file__).resolve().parents[2]


def default_vllm_python(root: pathlib.Path | None = None) -> str | None:
    """`.peers/vllm/bin/python` under the repository root, or None when it is not there."""
    path = (root or repo_root()) / ".peers" / "vllm" / "bin" / "python"
    return str(path) if path.exists() else None


def skip_reason(python: str | None) -> str | None:
    """Why `python` cannot run the peer (missing, not runnable, no vllm), or None if it can."""
    if not python:
        default = repo_root() / ".peers" / "vllm" / "bin" / "python"
        return f"no vLLM python given, and there is no {default}"
    exe = shutil.which(python)
    if exe is None:
        return f"{python} does not exist or is not executable"
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        done = subprocess.run([exe, "-c", probe], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{python} does not run: {e}"
    if done.returncode != 0:
        return f"vllm is not importable with {python}"
    return None


def make_spec(model_dir: str, passes: list[dict], **settings) -> dict:
    """A full runner spec: the runner's defaults overridden by `settings`, checked.

    Raises:
        ValueError: on an unknown setting, a model_dir without config.json or a bad pass.
    """
    return vllm_runner.check_spec({"model_dir": str(model_dir), "passes": passes, **settings})


def shared_prefix_prompts(
    num_requests: int, prefix_len: int, suffix_len: int, vocab_size: int, seed: int
) -> list[list[int]]:
    """Token-id prompts sharing one random prefix, each with its own random suffix.

    Ids are drawn from [3, vocab_size) so they avoid the usual bos/eos/pad ids.
    """
    rng = random.Random(seed)
    prefix = [rng.randrange(3, vocab_size) for _ in range(prefix_len)]
    return [
        prefix + [rng.randrange(3, vocab_size) for _ in range(suffix_len)]
        for _ in range(num_requests)
    ]


def write_spec(spec: dict, directory: str) -> pathlib.Path:
    """Writes `spec` as `spec.json` in `directory` and returns its path."""
    path = pathlib.Path(directory) / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def runner_env(env: dict | None) -> dict:
    """The runner's environment: ours, minus pcjax's Python paths, plus defaults and `env`."""
    merged = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    return {**merged, **DEFAULT_ENV, **(env or {})}


def find_pass(result: dict, name: str) -> dict:
    """The pass called `name` in a result; raises KeyError when there is none."""
    for p in result["passes"]:
        if p["name"] == name:
            return p
    raise KeyError(f"no pass named {name!r} in the vLLM result")


ERROR_LINE = re.compile(r"\b\w+(Error|Exception): \S")


@dataclasses.dataclass
class LogDigest:
    """What a failure message needs from vLLM's long log: its error lines and its last lines."""

    errors: list[str] = dataclasses.field(default_factory=list)  # distinct, first few
    tail: collections.deque = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=LOG_TAIL_LINES)
    )

    def add(self, line: str) -> None:
        """Takes one log line (without its newline)."""
        self.tail.append(line)
        match = ERROR_LINE.search(line)
        if match and len(self.errors) < 8 and line[match.start() :] not in self.errors:
            self.errors.append(line[match.start() :])

    def message(self, what: str) -> str:
        """An error message: what went wrong, vLLM's error lines, then its last lines."""
        return "\n".join(
            [f"vLLM peer failed: {what}", "--- error lines in its log ---", *self.errors]
            + ["--- last lines of its log ---", *self.tail]
        )


def pump_log(stream, digest: LogDigest, log_file, echo: bool) -> None:
    """Copies the runner's output line by line to the digest, the log file and (if echo) stderr."""
    for line in stream:
        digest.add(line.rstrip("\n"))
        log_file.write(line)
        if echo:
            sys.stderr.write(f"[vllm] {line}")


def kill_group(proc: subprocess.Popen) -> None:
    """Kills the runner and the engine processes it started (they share its session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def start_runner(python: str, spec_path, out_path, env: dict) -> subprocess.Popen:
    """Starts `vllm_runner.py` in a new session, its stdout and stderr merged into one pipe."""
    runner = pathlib.Path(vllm_runner.__file__).resolve()
    cmd = [python, str(runner), "--spec", str(spec_path), "--out", str(out_path)]
    return subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )


def read_result(out_path: pathlib.Path, returncode: int, digest: LogDigest) -> dict:
    """The runner's result; raises VllmPeerError when it failed or wrote nothing."""
    if not out_path.exists():
        raise VllmPeerError(digest.message(f"exit status {returncode}, no result written"))
    result = json.loads(out_path.read_text())
    if returncode != 0 or not result.get("ok"):
        raise VllmPeerError(digest.message(result.get("error", f"exit status {returncode}")))
    return result


def run_vllm(
    python: str | None,
    spec: dict,
    *,
    timeout_s: float,
    env: dict | None = None,
    log_path: str | None = None,
    echo: bool = False,
) -> dict | None:
    """Runs `spec` through vLLM with `python` (the peer venv's) and returns the result.

    Args:
        python: the vLLM venv's interpreter, e.g. `default_vllm_python()`.
        spec: a runner spec (see `make_spec` and `vllm_runner`); checked here first.
        timeout_s: wall-clock limit for the whole run, engine start (~70-100 s) included.
        env: environment overrides on top of `DEFAULT_ENV` and this process's environment.
        log_path: where to write vLLM's full log (it is long); None keeps only its tail.
        echo: also stream vLLM's log to stderr, line by line, prefixed "[vllm] ".

    Returns:
        The result dict (schema in this module's docstring), or None after printing why
        when `python` is missing or cannot import vllm.

    Raises:
        ValueError: the spec is bad (nothing is started).
        VllmPeerError: vLLM failed or ran past `timeout_s`.
    """
    vllm_runner.check_spec(spec)
    if not _runnable(python):
        return None
    start = time.perf_counter()
    with GatedRun(python, spec, timeout_s=timeout_s, env=env, log_path=log_path, echo=echo) as run:
        result = run.finish()
    full_env = runner_env(env)
    overrides = {k: full_env[k] for k in {**DEFAULT_ENV, **(env or {})}}
    result["client"] = {
        "python": python,
        "runner_wall_s": time.perf_counter() - start,
        "env_overrides": overrides,
        "log_path": log_path,
    }
    return result


class GatedRun:
    """vLLM's runner started in the background (`run_vllm` just waits for its result), each of
    its spec's ``gated_passes`` run when the caller says so: the caller times its own work in
    between, so both systems' timed passes take turns
    on the machine and never overlap (`bench_prefix_cache` interleaves its rounds this way, so
    that a slow drift of the machine falls on both alike). The gate protocol is in
    `vllm_runner`'s docstring.

        run = vllm_peer.start_gated(python, spec, timeout_s=1800)   # None: no vLLM here
        run.wait_ready("timed_0")   # engine up, the passes before done, idle at the gate
        ...                         # the caller's own timed round
        run.release("timed_0")      # vLLM's pass runs; returns once it is done
        result = run.finish()       # as `run_vllm` returns it

    Every wait ends by `timeout_s` (from the start) or when the runner exits; either raises
    `VllmPeerError` and kills the runner. `close` (also on leaving a ``with`` block) kills it
    if it still runs.
    """

    def __init__(
        self, python: str, spec: dict, *, timeout_s: float, env=None, log_path=None, echo=False
    ):
        self._tmp = tempfile.TemporaryDirectory(prefix="vllm_peer_")
        self.gate_dir = pathlib.Path(self._tmp.name)
        spec = vllm_runner.check_spec({**spec, "gate_dir": str(self.gate_dir)})
        self._timeout_s = timeout_s
        self._deadline = time.monotonic() + timeout_s
        self._out = self.gate_dir / "result.json"
        self.digest = LogDigest()
        self._log = open(log_path or os.devnull, "w")  # noqa: SIM115 (closed by finish/close)
        spec_path = write_spec(spec, self._tmp.name)
        self.proc = start_runner(python, spec_path, self._out, runner_env(env))
        self._pump = threading.Thread(
            target=pump_log, args=(self.proc.stdout, self.digest, self._log, echo)
        )
        self._pump.start()

    def __enter__(self) -> "GatedRun":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_ready(self, name: str) -> None:
        """Waits until vLLM waits at the gate of pass `name`."""
        self._wait_for(f"ready_{name}")

    def release(self, name: str) -> None:
        """Lets pass `name` run and waits until it is done."""
        (self.gate_dir / f"go_{name}").touch()
        self._wait_for(f"done_{name}")

    def finish(self) -> dict:
        """Waits for the runner to end (by the timeout); returns its result (`run_vllm`'s,
        without ``client``)."""
        try:
            self.proc.wait(timeout=max(0.0, self._deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.close()
            what = f"timed out after {self._timeout_s:.0f} s"
            raise VllmPeerError(self.digest.message(what)) from None
        self._pump.join()
        try:
            return read_result(self._out, self.proc.returncode, self.digest)
        finally:
            self.close()

    def close(self) -> None:
        """Kills the runner if it still runs; removes the gate directory (idempotent)."""
        if self.proc.poll() is None:
            kill_group(self.proc)
        self._pump.join()
        self._log.close()
        self._tmp.cleanup()

    def _wait_for(self, file: str) -> None:
        path = self.gate_dir / file
        while not path.exists():
            if self.proc.poll() is not None:
                self._pump.join()
                what = f"exit status {self.proc.returncode} before {file}"
                self.close()
                raise VllmPeerError(self.digest.message(what))
            if time.monotonic() > self._deadline:
                self.close()
                raise VllmPeerError(self.digest.message(f"timed out waiting for {file}"))
            time.sleep(vllm_runner.GATE_POLL_S)


def start_gated(python: str | None, spec: dict, *, timeout_s: float, **kwargs) -> GatedRun | None:
    """Starts a `GatedRun`, or returns None after printing why when `python` cannot run vLLM.

    Raises:
        ValueError: the spec is bad (nothing is started).
    """
    vllm_runner.check_spec(spec)
    if not _runnable(python):
        return None
    return GatedRun(python, spec, timeout_s=timeout_s, **kwargs)


def _runnable(python: str | None) -> bool:
    """Whether `python` can run the peer; if not, prints why and how to set it up."""
    reason = skip_reason(python)
    if reason is not None:
        print(f"vLLM peer skipped: {reason}; {SETUP_HINT}")
    return reason is None


def format_summary(result: dict) -> str:
    """A few human-readable lines: engine start, then per pass wall time, TTFT and cache hits."""
    cfg = result["effective_config"]
    lines = [
        f"vLLM {result['versions']['vllm']} on {result['device']}: engine start "
        f"{result['engine_start_s']:.1f} s, prefix caching {cfg['enable_prefix_caching']}, "
        f"block {cfg['block_size']}, max_num_batched_tokens {cfg['max_num_batched_tokens']}"
    ]
    for p in result["passes"]:
        t = p["ttft_s"] or {}
        hit = p["prefix_cache"]["hit_rate"]
        lines.append(
            f"  {p['name']:>8}: {p['wall_s']:6.2f} s  {p['num_requests']} req  "
            f"ttft p50 {t.get('p50', float('nan')):.3f} p90 {t.get('p90', float('nan')):.3f} "
            f"max {t.get('max', float('nan')):.3f} s  cached {p['cached_tokens']}/"
            f"{p['prompt_tokens']} tok  hit rate {'n/a' if hit is None else f'{hit:.3f}'}  "
            f"cpu {p['cpu_s'] / p['wall_s']:.2f} cores  load {p['load_avg_1m']['after']:.1f}"
        )
    return "\n".join(lines)
