"""Starting and stopping a server subprocess on a loopback port, for tests and experiments.

Every server started here listens on 127.0.0.1 and is stopped by its process id (`stop`).
"""

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_pcjax_server(flags: list[str], port: int, log_path: str | None = None):
    """Starts ``python -m pcjax.entrypoints.openai.api_server FLAGS --port PORT`` on 127.0.0.1."""
    cmd = [sys.executable, "-m", "pcjax.entrypoints.openai.api_server", *flags]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    return start_process(cmd, log_path, cwd=REPO)


def start_process(cmd: list[str], log_path: str | None, cwd=None, env=None):
    log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115 - the child's
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True
    )
    if log is not subprocess.DEVNULL:
        log.close()
    return proc


def wait_healthy(url: str, proc, timeout_s: float = 300.0) -> list[int]:
    """Polls ``url/health`` until 200; returns the status codes seen (None: no answer yet).

    Raises RuntimeError if the process exits or the time runs out.
    """
    seen, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before it was ready")
        try:
            code = httpx.get(f"{url}/health", timeout=5).status_code
        except httpx.HTTPError:
            code = None
        if not seen or seen[-1] != code:
            seen.append(code)
        if code == 200:
            return seen
        time.sleep(0.2)
    raise RuntimeError(f"the server at {url} was not healthy after {timeout_s} s")


def stop(proc, timeout_s: float = 20.0) -> None:
    """Stops a server process (and its children) by its id: SIGTERM, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout_s)


def metric_value(metrics_text: str, name: str, **labels) -> float:
    """The sum of a Prometheus metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


async def sse_events(response):
    """The ``data:`` payloads of a streaming response, split on newlines only.

    (``aiter_lines`` also splits on U+2028, U+0085 and the like, which servers may leave
    unescaped inside the JSON of a chunk.)
    """
    buffer = ""
    async for text in response.aiter_text():
        buffer += text
        *lines, buffer = buffer.split("\n")
        for line in lines:
            line = line.rstrip("\r")
            if line.startswith("data: "):
                yield line[6:]
    if buffer.startswith("data: "):
        yield buffer[6:].rstrip("\r")


def make_workload(seed: int, groups: int, per_group: int, system_len: int, question_len: int):
    """SGLang's generated-shared-prefix prompts (token ids), group after group."""
    rng = random.Random(seed)
    systems = [[rng.randrange(3, 250) for _ in range(system_len)] for _ in range(groups)]
    return [
        system + [rng.randrange(3, 250) for _ in range(question_len)]
        for system in systems
        for _ in range(per_group)
    ]
