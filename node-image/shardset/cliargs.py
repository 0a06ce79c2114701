"""The CLI's argument types and value input/output: keys checked as UTF-8 text, values
taken byte for byte (from argv, stdin or a file) and written out safely.

A bad argument is an `argparse.ArgumentTypeError` (argparse prints usage and the
message, exit 2) or a `UsageError` (the CLI's one error handler, exit 2).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from shardset_proto.commands import MAX_KEY_BYTES, MAX_VALUE_BYTES

STDIN = "-"


class UsageError(Exception):
    """What was asked cannot be done as asked (exit 2)."""


def positive(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"want a positive integer, got {text!r}")
    return int(text)


def bounded(top: int) -> Callable[[str], int]:
    """An argparse type: an integer from 1 to `top`."""

    def parse(text: str) -> int:
        if not text.isdigit() or not 1 <= int(text) <= top:
            raise argparse.ArgumentTypeError(f"want an integer from 1 to {top}, got {text!r}")
        return int(text)

    parse.__name__ = f"1..{top}"
    return parse


def endpoint_list(text: str) -> list[str]:
    """Comma-separated node API URLs, each http(s)://HOST[:PORT]."""
    found = [e.strip() for e in text.split(",") if e.strip()]
    if not found:
        raise argparse.ArgumentTypeError(f"want node API URLs (http://HOST:PORT), got {text!r}")
    for url in found:
        try:
            parts = urlsplit(url)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname) and url.isascii()
            parts.port  # noqa: B018 - raises ValueError when out of range
        except ValueError:
            ok = False
        if not ok:
            shown = os.fsencode(url) if not url.isascii() else url
            raise argparse.ArgumentTypeError(
                f"not a node API URL: {shown!r} (want http://HOST:PORT, e.g. http://127.0.0.1:7101)"
            )
    return found


def key_arg(text: str) -> str:
    """A key from argv: UTF-8 text of 1 to MAX_KEY_BYTES bytes. Bytes that are not UTF-8
    reach Python as lone surrogates (surrogateescape); they are refused here, named."""
    try:
        size = len(text.encode())
    except UnicodeEncodeError:
        raw = os.fsencode(text)
        raise argparse.ArgumentTypeError(
            f"key is not valid UTF-8: {raw!r} (keys are UTF-8 text)"
        ) from None
    if not 1 <= size <= MAX_KEY_BYTES:
        raise argparse.ArgumentTypeError(f"key must be 1 to {MAX_KEY_BYTES} bytes, got {size}")
    return text


def optional_key_arg(text: str) -> str:
    return text if text == "" else key_arg(text)


def read_value(value: str | None, value_file: Path | None) -> bytes:
    """The value to put: argv's bytes as given, stdin (`-`) or a file's bytes."""
    if (value is None) == (value_file is None):
        raise UsageError("put takes a VALUE (- reads stdin) or --value-file PATH, one of them")
    if value_file is not None:
        with value_file.open("rb") as f:
            data = f.read(MAX_VALUE_BYTES + 1)
    elif value == STDIN:
        data = sys.stdin.buffer.read(MAX_VALUE_BYTES + 1)
    else:
        assert value is not None
        data = os.fsencode(value)  # the argument's own bytes, UTF-8 or not
    if len(data) > MAX_VALUE_BYTES:
        raise UsageError(f"the value is over the store's limit of {MAX_VALUE_BYTES} bytes")
    return data


def write_value(value: bytes, *, raw: bool, output: Path | None) -> None:
    """`--output`: the bytes into a file; `--raw`: the bytes to stdout as they are;
    else the value and a newline, refused on a terminal if it is not printable text."""
    if output is not None:
        output.write_bytes(value)
    elif raw:
        sys.stdout.buffer.write(value)
    elif sys.stdout.isatty() and not _printable(value):
        raise UsageError(
            f"the value is {len(value)} bytes that are not printable text; "
            "pass --raw to write them to the terminal anyway, or -o PATH"
        )
    else:
        sys.stdout.buffer.write(value + b"\n")


def _printable(value: bytes) -> bool:
    try:
        text = value.decode()
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\n\t" for c in text)


def safe_text(value: bytes) -> str:
    """`value` for one line of a listing: UTF-8 text as it is; bytes that are not UTF-8,
    control characters (a tab or newline would break the line) and backslashes escaped."""
    out = []
    for c in value.decode(errors="surrogateescape"):
        if c == "\\":
            out.append("\\\\")
        elif "\udc80" <= c <= "\udcff":
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        elif not c.isprintable():
            out.append(f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return "".join(out)
