"""Starts N local processes of one command as one multi-process JAX job, for testing multi-host
code on one machine (CPU devices, gloo collectives).

    python -m pcjax.parallel.launch --num_processes=2 --cpu_devices_per_process=4 -- \\
        python -m experiments.check_parallel --meshes=2x4,1x8 --reference=ref.json

Process i runs the command with ``--coordinator_address=127.0.0.1:PORT --num_processes=N
--process_id=i --num_cpu_devices=K`` appended (the command passes them to
`pcjax.parallel.multihost.initialize`). Each process's output goes to ``--log_dir/process_i.log``;
the launcher waits for all of them at most ``--timeout`` seconds, then kills the ones still
running (by their process ids) and reports. It exits with the first non-zero exit code.
"""

import argparse
import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import time


@dataclasses.dataclass(frozen=True)
class ProcessResult:
    process_id: int
    returncode: int | None  # None: killed at the timeout
    log_path: str


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_processes(
    command: list[str],
    num_processes: int,
    *,
    cpu_devices_per_process: int | None = None,
    log_dir: str = ".",
    port: int | None = None,
    env: dict | None = None,
) -> list[subprocess.Popen]:
    """Starts ``command`` as processes 0..N-1 of one job (see the module docstring), output to
    ``log_dir/process_i.log``; the caller stops them (`stop_processes`)."""
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    port = port or free_port()
    os.makedirs(log_dir, exist_ok=True)
    procs = []
    try:
        for i in range(num_processes):
            args = [
                f"--coordinator_address=127.0.0.1:{port}",
                f"--num_processes={num_processes}",
                f"--process_id={i}",
            ]
            if cpu_devices_per_process is not None:
                args.append(f"--num_cpu_devices={cpu_devices_per_process}")
            with open(os.path.join(log_dir, f"process_{i}.log"), "w") as log:
                procs.append(
                    subprocess.Popen(
                        [*command, *args], stdout=log, stderr=subprocess.STDOUT, env=env
                    )
                )
    except BaseException:
        stop_processes(procs)
        raise
    return procs


def stop_processes(procs: list[subprocess.Popen], grace_s: float = 0.0) -> None:
    """Stops the processes still running, by their ids: SIGTERM, ``grace_s``, then SIGKILL."""
    for proc in procs:
        if proc.poll() is None and grace_s > 0:
            proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in procs:
        if proc.poll() is None:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def launch(
    command: list[str],
    num_processes: int,
    *,
    cpu_devices_per_process: int | None = None,
    log_dir: str = ".",
    timeout: float = 600.0,
    port: int | None = None,
    env: dict | None = None,
) -> list[ProcessResult]:
    """Runs ``command`` as processes 0..N-1 of one job until all end (or one fails, or the time
    runs out); returns how each ended. Nothing it started is left running."""
    procs = start_processes(
        command,
        num_processes,
        cpu_devices_per_process=cpu_devices_per_process,
        log_dir=log_dir,
        port=port,
        env=env,
    )
    try:
        return _wait(procs, log_dir, timeout)
    finally:
        stop_processes(procs)


def _wait(procs, log_dir: str, timeout: float) -> list[ProcessResult]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        if any(p.poll() not in (None, 0) for p in procs):
            break  # one failed: the others would wait for it forever
        time.sleep(0.2)
    return [
        ProcessResult(i, p.poll(), os.path.join(log_dir, f"process_{i}.log"))
        for i, p in enumerate(procs)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_processes", type=int, required=True)
    parser.add_argument("--cpu_devices_per_process", type=int, default=None)
    parser.add_argument("--log_dir", default="workdir/launch")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    results = launch(
        command,
        args.num_processes,
        cpu_devices_per_process=args.cpu_devices_per_process,
        log_dir=args.log_dir,
        timeout=args.timeout,
    )
    code = 0
    for r in results:
        state = "killed at the timeout" if r.returncode is None else f"exit {r.returncode}"
        print(f"process {r.process_id}: {state} (log {r.log_path})")
        if code == 0 and r.returncode != 0:
            code = 1 if r.returncode is None else r.returncode
    with contextlib.suppress(OSError), open(results[0].log_path) as f:
        sys.stdout.write(f.read()[-4000:])
    return code


if __name__ == "__main__":
    sys.exit(main())
