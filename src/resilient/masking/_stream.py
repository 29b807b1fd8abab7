"""Masking a stream of lines: ``resilient mask`` and anything that pipes logs through."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterable, Iterator

__all__ = ["mask_lines", "run_cli"]

_PEM_BEGIN = re.compile(r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
_PEM_END = re.compile(r"-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
#: A PEM block longer than this many lines is masked as far as it was read (a 16384-bit RSA key is ~200 lines).
MAX_BLOCK_LINES = 400


def mask_lines(lines: Iterable[str], mask: Callable[[str], str]) -> Iterator[str]:
    """Mask line by line, except that a PEM private-key block is masked whole.

    A line that opens a private key without closing it starts a buffer that
    runs to the line that closes it (at most :data:`MAX_BLOCK_LINES` lines),
    so the detector sees the whole block; everything else streams.
    """
    buffer: list[str] = []
    for line in lines:
        if buffer:
            buffer.append(line)
            if _PEM_END.search(line) or len(buffer) >= MAX_BLOCK_LINES:
                yield mask("".join(buffer))
                buffer = []
            continue
        begin = _PEM_BEGIN.search(line)
        if begin is not None and not _PEM_END.search(line, begin.end()):
            buffer.append(line)
            continue
        yield mask(line)
    if buffer:
        yield mask("".join(buffer))


def run_cli(args: argparse.Namespace) -> int:
    """``resilient mask [FILE]``: FILE (or stdin when absent or ``-``) masked to stdout."""
    from . import load_masker

    try:
        masker, _ = load_masker()
    except Exception as exc:  # ConfigurationError, PluginError: name the problem, never a value
        print(f"error: {exc}", file=sys.stderr)
        return 2
    source = args.mask_file
    stream = (
        sys.stdin if source in (None, "-") else open(source, encoding="utf-8", errors="surrogateescape")  # noqa: SIM115 - closed below
    )
    try:
        for chunk in mask_lines(stream, masker.mask):
            sys.stdout.write(chunk)
        sys.stdout.flush()
    except BrokenPipeError:  # `resilient mask big.log | head`
        return 0
    finally:
        if stream is not sys.stdin:
            stream.close()
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("mask", help="mask secrets and personal data in a log file (or stdin) to stdout")
    p.add_argument("mask_file", nargs="?", metavar="FILE", help="file to mask; stdin when absent or '-'")
    p.set_defaults(func=run_cli)
