"""Argument types shared by management commands."""

from __future__ import annotations

import argparse


def positive_int(value: str) -> int:
    """An ``argparse`` type: an integer of at least 1 (a batch size of 0 or less is refused
    before the command does anything, instead of failing or doing nothing halfway)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{number} is not a positive integer")
    return number
