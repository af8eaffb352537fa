"""The ``pcjax`` command: ``pcjax serve MODEL [flags]`` starts the OpenAI-compatible server
(the flags of ``python -m pcjax.entrypoints.openai.api_server``, MODEL positional)."""

import argparse
import sys


def make_parser() -> argparse.ArgumentParser:
    from pcjax.entrypoints.openai.args import add_server_args

    parser = argparse.ArgumentParser(prog="pcjax", description="pcjax command line")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="start the OpenAI-compatible server", description="pcjax serve MODEL"
    )
    add_server_args(serve, positional_model=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.command == "serve":
        from pcjax.entrypoints.openai.api_server import serve

        return serve(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
