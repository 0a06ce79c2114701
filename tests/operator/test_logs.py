"""Operator logs: one JSON object per line, Kopf's lines included, timer noise dropped."""

from __future__ import annotations

import json
import logging

import pytest

from shardset_operator import logs


def test_json_lines_and_quiet_timers(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        logs.configure("json")
        kopf_log = logging.getLogger("kopf.objects")
        kopf_log.info("Timer 'tick' succeeded.")
        kopf_log.error(
            "Handler 'created' failed", extra={"k8s_ref": {"kind": "ShardSet", "name": "kv"}}
        )
        logging.getLogger("shardset_operator").warning("switch failed")
    finally:
        root.handlers[:], root.level = saved
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["event"] for line in lines] == ["Handler 'created' failed", "switch failed"]
    assert lines[0]["level"] == "error"
    assert lines[0]["object"] == {"kind": "ShardSet", "name": "kv"}
