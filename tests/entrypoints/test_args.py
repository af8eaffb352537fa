"""Server flags: the reference command parses unchanged, `pcjax serve MODEL` too, and bad values
stop the server at start with a clear message."""

import socket

import pytest

from pcjax.entrypoints import cli
from pcjax.entrypoints.openai import api_server
from pcjax.entrypoints.openai.args import check_args, engine_config

REFERENCE = [
    "--model", "smollm2-135m", "--port", "8180", "--engine-worker-queue-port", "8181",
    "--metrics-port", "8182", "--cache-queue-port", "8183", "--enable-prefix-caching",
    "--swap-space", "1", "--max-model-len", "2048", "--max-num-seqs", "32",
]  # fmt: skip


def test_reference_command_parses_and_passes_the_model_through():
    args = api_server.make_parser().parse_args(REFERENCE)
    config = engine_config(args)  # (check_args would also probe ports 8180 and 8182)
    assert config.model == "smollm2-135m" and config.swap_space == 1
    assert config.max_model_len == 2048 and config.max_num_seqs == 32
    assert config.enable_prefix_caching


def test_pcjax_serve_takes_the_model_positionally():
    args = cli.make_parser().parse_args(["serve", "pcjax-tiny", "--no-enable-prefix-caching"])
    assert args.command == "serve" and args.model == "pcjax-tiny"
    assert not args.enable_prefix_caching


def test_help_says_the_queue_ports_are_not_needed(capsys):
    with pytest.raises(SystemExit):
        api_server.make_parser().parse_args(["--help"])
    assert "does not use it" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--swap-space", "100000"], "available memory"),
        (["--block-size", "0"], "page_size"),
        (["--eviction-policy", "lru", "--max-num-seqs", "0"], "max_num_seqs"),
        (["--port", "70000"], "out of range"),
    ],
)
def test_bad_values_are_refused_at_start(flags, message):
    args = api_server.make_parser().parse_args(["--model", "pcjax-tiny", *flags])
    with pytest.raises(ValueError, match=message):
        check_args(args)


def test_a_port_in_use_is_refused():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        args = api_server.make_parser().parse_args(["--port", str(port)])
        with pytest.raises(ValueError, match=f"cannot listen on 127.0.0.1:{port}"):
            check_args(args)
        assert api_server.serve(args) == 2  # the server does not start
