"""Command-line options that several commands share, each declared once: the encoder and its checkpoint, where the
encoder runs and its batch size, and the number types that reject a bad value before any work starts (argparse then
prints one usage line and exits with 2)."""

from __future__ import annotations

import argparse

from .encoders import ENCODER_NAMES

DEVICES = ("cpu", "cuda", "auto")


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more (got {value})")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer of at least 0 (a seed)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more (got {value})")
    return value


def fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1 (a significance level)."""
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (got {value})")
    return value


def add_encoder_options(parser: argparse.ArgumentParser, checkpoint_help: str) -> None:
    """``--encoder`` (the embedded default or MRI-CORE) and ``--checkpoint`` (a local weights file)."""
    parser.add_argument(
        "--encoder",
        default="default",
        choices=ENCODER_NAMES,
        help="slice encoder (default: the embedded EfficientNet-Lite0)",
    )
    parser.add_argument("--checkpoint", help=checkpoint_help)


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """``--device``: where the encoder runs."""
    parser.add_argument("--device", default="cpu", choices=DEVICES, help="where the encoder runs (default: cpu)")


def add_batch_size_option(parser: argparse.ArgumentParser) -> None:
    """``--batch-size``: slices per forward pass, at least 1."""
    parser.add_argument("--batch-size", type=positive_int, default=32, help="slices per forward pass (default: 32)")
