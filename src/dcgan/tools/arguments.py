"""Argument types shared by the `dcgan` commands (and `python -m benchmarks`), and the way
both run a parsed command."""

from __future__ import annotations

import argparse

from dcgan.runtime.stage import stage_main


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    """Parse `argv` (default: the command line) and run the chosen subcommand's handler.

    Raises:
        SystemExit: 2 on bad arguments or a UserError, 130 on Ctrl-C.
    """
    args = parser.parse_args(argv)
    stage_main(lambda: args.handler(args))


def names(text: str) -> list[str]:
    """`a, b,c` as `['a', 'b', 'c']`."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated names")
    return names


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value
