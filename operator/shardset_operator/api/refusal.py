"""A spec change the operator will not carry out: planned by `plan/shape.py`, shown by
`status/` as Progressing=False with this reason and message."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Refusal:
    reason: str  # CamelCase, for the condition
    message: str
