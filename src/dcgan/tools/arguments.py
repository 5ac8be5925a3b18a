"""Argument types shared by the `dcgan` commands."""

from __future__ import annotations

import argparse


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
