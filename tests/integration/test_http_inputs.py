"""Bad HTTP input against a real one-node store: every malformed request is a 4xx JSON
answer naming what is wrong (never a plain-text 500), keys that are not UTF-8 are
refused rather than stored under another key, and the node's log holds no traceback."""

from __future__ import annotations

import gzip
import http.client
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from shardset import local


@pytest.fixture(scope="module")
def node(one_node_store: local.LocalCluster) -> local.LocalCluster:
    return one_node_store


def _ask(
    cluster: local.LocalCluster,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str, Any]:
    """(status, content type, JSON body or text) of one request."""
    url = urlsplit(cluster.endpoints[0])
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        ctype = resp.headers.get("Content-Type", "")
    finally:
        conn.close()
    if ctype.startswith("application/json"):
        return resp.status, ctype, json.loads(raw)
    return resp.status, ctype, raw.decode(errors="replace")


def _log(cluster: local.LocalCluster) -> str:
    return Path(cluster.log_path(1)).read_text(errors="replace")


BAD_INPUTS = [
    pytest.param(
        "PUT", "/v1/kv/gz", b"not gzip at all", {"Content-Encoding": "gzip"}, id="gzip-put"
    ),
    pytest.param(
        "POST",
        "/v1/cas/cs",
        b'{"expected": null, "value": null}',
        {"Content-Type": "application/json; charset=foo"},
        id="charset-foo",
    ),
    pytest.param(
        "POST",
        "/v1/cas/deep",
        b"[" * 1000 + b"]" * 1000,
        {"Content-Type": "application/json"},
        id="deep-json",
    ),
    pytest.param(
        "POST",
        "/v1/cas/big",
        b'{"expected": ' + b"9" * 5001 + b', "value": null}',
        {"Content-Type": "application/json"},
        id="huge-number",
    ),
    pytest.param("GET", "/v1/scan?shard=1&limit=9223372036854775808", None, {}, id="huge-limit"),
    pytest.param("GET", "/v1/kv/k?min_index=99999999999999999999999", None, {}, id="huge-index"),
    pytest.param("GET", "/v1/scan?shard=1&limit=0", None, {}, id="zero-limit"),
]


@pytest.mark.parametrize(("method", "path", "body", "headers"), BAD_INPUTS)
def test_bad_input_is_a_json_4xx(
    node: local.LocalCluster,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
) -> None:
    status, ctype, answer = _ask(node, method, path, body, headers)
    assert 400 <= status < 500, (status, answer)
    assert ctype.startswith("application/json"), answer
    assert answer["error"] and answer["message"]


def test_valid_gzip_body_is_stored_decoded(node: local.LocalCluster) -> None:
    status, _, _ = _ask(node, "PUT", "/v1/kv/gz-ok", gzip.compress(b"hello"),
                        {"Content-Encoding": "gzip"})  # fmt: skip
    assert status == 200
    status, _, answer = _ask(node, "GET", "/v1/kv/gz-ok")
    assert (status, answer["value"]) == (200, "aGVsbG8=")


def test_key_that_is_not_utf8_is_refused_naming_it(node: local.LocalCluster) -> None:
    """`%FF%FE` was decoded with replacement characters and stored under another key."""
    status, _, answer = _ask(node, "PUT", "/v1/kv/a%FF%FE", b"x")
    assert (status, answer["error"]) == (400, "bad_key")
    assert "%FF%FE" in answer["message"]
    status, _, answer = _ask(node, "GET", "/v1/kv/a%FF%FE")
    assert (status, answer["error"]) == (400, "bad_key")
    status, _, answer = _ask(node, "GET", "/v1/kv/a%25FF%25FE")  # the key "a%FF%FE"
    assert status == 404  # nothing was stored under the escapes' text either


def test_transfer_leader_to_a_node_that_is_no_voter_names_it(node: local.LocalCluster) -> None:
    for target in (7, 0):
        status, ctype, answer = _ask(
            node,
            "POST",
            "/v1/admin/transfer-leader",
            json.dumps({"shard": 1, "to": target}).encode(),
            {"Content-Type": "application/json"},
        )
        assert status in (400, 409) and ctype.startswith("application/json"), answer
        assert str(target) in answer["message"]


def test_session_read_far_ahead_is_not_called_a_partition(node: local.LocalCluster) -> None:
    """The leader itself answered 503 no_leader, 'may be cut off from the majority'."""
    status, _, answer = _ask(node, "GET", "/v1/kv/k?consistency=session&min_index=1000000000")
    assert (status, answer["error"]) == (400, "index_ahead"), answer
    assert "cut off" not in answer["message"]
    assert answer["commit_index"] < 1000000000


def test_unknown_shard_scan_is_a_documented_answer(node: local.LocalCluster) -> None:
    status, ctype, answer = _ask(node, "GET", "/v1/scan?shard=999")
    assert status == 404 and ctype.startswith("application/json"), answer
    assert "999" in answer["message"]


def test_no_traceback_in_the_log(node: local.LocalCluster) -> None:
    for param in BAD_INPUTS:
        _ask(node, *param.values)
    _ask(node, "GET", "/v1/kv/" + "x" * 20000)
    assert "Traceback" not in _log(node)


def test_key_length_as_documented_and_long_lines_refused(node: local.LocalCluster) -> None:
    """The document's key bound (characters) always fits the server's (UTF-8 bytes),
    and a request line past the server's limit is a documented 400."""
    status, _, doc = _ask(node, "GET", "/v1/openapi.json")
    key_schema = doc["paths"]["/v1/kv/{key}"]["parameters"][0]["schema"]
    longest = "\N{GRINNING FACE}" * key_schema["maxLength"]  # 4 bytes of UTF-8 each
    status, _, _ = _ask(node, "PUT", "/v1/kv/" + quote(longest), b"v")
    assert status == 200
    status, ctype, _ = _ask(node, "GET", "/v1/kv/" + "x" * 20_000)
    documented = doc["paths"]["/v1/kv/{key}"]["get"]["responses"][str(status)]["content"]
    assert status == 400 and ctype.split(";")[0] in documented
