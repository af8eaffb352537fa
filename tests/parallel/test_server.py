"""The server's parallel flags, and one server over two processes: process 0 answers HTTP and
leads, process 1 follows; each process holds one replica (data_parallel_size 2, one simulated
CPU device each); stopping process 0 stops process 1."""

import contextlib
import socket
import subprocess
import sys

import httpx
import pytest

from experiments import serving_utils
from pcjax.entrypoints.openai import api_server
from pcjax.entrypoints.openai.args import check_args, engine_config
from pcjax.parallel.launch import start_processes, stop_processes
from tests.parallel.conftest import cpu_env


def parse(*flags: str):
    return api_server.make_parser().parse_args(["--model", "pcjax-tiny", *flags])


def test_parallel_sizes_reach_the_engine_config():
    config = engine_config(parse("-tp", "2", "--data-parallel-size", "4"))
    assert (config.tensor_parallel_size, config.data_parallel_size) == (2, 4)
    with pytest.raises(ValueError, match="tensor_parallel_size must be a positive int"):
        engine_config(parse("--tensor-parallel-size", "0"))


def test_multi_process_flags_are_checked():
    with pytest.raises(ValueError, match="needs --coordinator-address"):
        check_args(parse("--num-processes", "2"))
    with pytest.raises(ValueError, match="outside"):
        check_args(
            parse("--num_processes", "2", "--coordinator_address", "x:1", "--process_id", "2")
        )
    with socket.socket() as sock:  # a follower listens on nothing: its --port is not probed
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = str(sock.getsockname()[1])
        follower = parse(
            "--port",
            busy,
            "--num-processes",
            "2",
            "--coordinator-address",
            "x:1",
            "--process-id",
            "1",
        )
        check_args(follower)
        with pytest.raises(ValueError, match="cannot listen"):
            check_args(parse("--port", busy))


def test_a_server_over_two_processes(cpu_only, tmp_path):
    port = serving_utils.free_port()
    command = [
        sys.executable,
        "-m",
        "pcjax.entrypoints.openai.api_server",
        "--model",
        "pcjax-tiny",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-parallel-size",
        "2",
        "--block-size",
        "4",
        "--max-model-len",
        "128",
        "--num-pages",
        "64",
        "--max-num-seqs",
        "4",
        "--attention-impl",
        "cpu",
    ]
    procs = start_processes(
        command, 2, cpu_devices_per_process=1, log_dir=str(tmp_path), env=cpu_env()
    )
    url = f"http://127.0.0.1:{port}"
    try:
        serving_utils.wait_healthy(url, procs[0], timeout_s=300)
        prefix = list(range(40, 80))
        body = {"model": "pcjax-tiny", "max_tokens": 4, "temperature": 0}
        answers = []
        unrelated = list(range(100, 130))
        for prompt in (prefix + [5, 6], prefix + [7, 8], prefix + [5, 6], unrelated):
            r = httpx.post(f"{url}/v1/completions", json={**body, "prompt": prompt}, timeout=120)
            assert r.status_code == 200, r.text
            answers.append(r.json())
        assert answers[2]["choices"][0]["text"] == answers[0]["choices"][0]["text"]
        assert answers[2]["usage"]["prompt_tokens_details"]["cached_tokens"] >= 40
        engine = httpx.get(f"{url}/debug/engine", timeout=60).json()
        assert engine["integrity"] == "ok"
        replicas = engine["stats"]["replicas"]
        # the warm-up request went to replica 0, so the prefix's first request to replica 1,
        # where the prefix keeps the next two; the unrelated prompt goes to the idler replica 0
        assert [r["dispatched_requests"] for r in replicas] == [2, 3]
    finally:
        stop_processes(procs[:1], grace_s=60)  # process 0 stops the follower as it shuts down
        with contextlib.suppress(subprocess.TimeoutExpired):
            procs[1].wait(60)
        stop_processes(procs)
    follower_log = (tmp_path / "process_1.log").read_text()
    assert procs[1].returncode == 0, follower_log[-3000:]
    assert "process 0 stopped after" in follower_log
