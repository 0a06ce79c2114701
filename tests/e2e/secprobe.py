"""Security probes run inside the cluster, in a pod of the node image (no other image can
be pulled here); each prints one JSON result behind a marker line, like workload.py.

    intruder  no credentials (and then a certificate of its own CA claiming to be node 1):
              every port of the store, what each answered. `refused` means the TLS
              handshake or the first read failed, or the port was unreachable (a
              NetworkPolicy that is enforced drops the connection).
    user      with a ShardSetUser's Secret mounted: a put and a get by token or by
              certificate; the HTTP status of each.
    watch     with a user's token: a GET every 0.2 s for `--seconds`, each answer's wall
              clock time and status (the test deletes the user meanwhile).

Needs only the node image's packages (shardset_proto, cryptography, msgpack).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import socket
import ssl
import struct
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from shardset_proto import framing, pki, wire
from shardset_proto.identity import Identity

MARKER = "SHARDSET-E2E-RESULT "
TIMEOUT = 5.0


def _ctx(cafile: Path | None = None, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """Verifying when given the store's CA; an intruder has none and verifies nothing."""
    if cafile is None:
        ctx = ssl._create_unverified_context()  # the intruder trusts anything
    else:
        ctx = ssl.create_default_context(cafile=str(cafile))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 307 to the shard's leader is followed by http() itself


def http(
    url: str,
    ctx: ssl.SSLContext,
    method: str = "GET",
    token: str | None = None,
    body: bytes | None = None,
) -> str:
    """The HTTP status as a string (after following up to three redirects to a leader,
    with the same credentials), or `refused: <why>` when no HTTP answer came."""
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx), _NoRedirect)
    for _ in range(4):
        req = urllib.request.Request(url, data=body, method=method)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with opener.open(req, timeout=TIMEOUT) as rsp:
                return str(rsp.status)
        except urllib.error.HTTPError as e:
            location = e.headers.get("Location")
            if e.code not in (307, 308) or not location:
                return str(e.code)
            url = urllib.parse.urljoin(url, location)
        except (urllib.error.URLError, OSError, ssl.SSLError) as e:
            reason = getattr(e, "reason", e)
            return f"refused: {type(reason).__name__}: {reason}"[:200]
    return "too many redirects"


def _frame(sock: ssl.SSLSocket) -> bytes:
    head = _read(sock, 4)
    return _read(sock, struct.unpack(">I", head)[0])


def _read(sock: ssl.SSLSocket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed by the node")
        out += chunk
    return out


def tls_exchange(host: str, port: int, ctx: ssl.SSLContext, first: bytes) -> str:
    """Handshake, send `first`, read one frame: `answered: ...` or `refused: <why>`.
    With TLS 1.3 a missing or unknown client certificate is refused after the client's
    side of the handshake completed: the node's alert arrives at the first read."""
    try:
        with (
            socket.create_connection((host, port), timeout=TIMEOUT) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as sock,
        ):
            sock.sendall(first)
            return f"answered: {_frame(sock)[:80]!r}"
    except (OSError, ssl.SSLError, ConnectionError, struct.error) as e:
        return f"refused: {type(e).__name__}: {e}"[:200]


def wire_unauthenticated(host: str, ctx: ssl.SSLContext) -> str:
    """The wire port without a token: the hello is answered, the request gets a 401."""
    try:
        with (
            socket.create_connection((host, 7001), timeout=TIMEOUT) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as sock,
        ):
            sock.sendall(wire.hello(wire.VERSION, 0))
            _frame(sock)
            sock.sendall(wire.encode_batch([[2, *wire.get("probe", None, None, 0)]]))
            [answer] = wire.decode_batch(_frame(sock))
            return str(answer[1])
    except (OSError, ssl.SSLError, ConnectionError, struct.error, ValueError) as e:
        return f"refused: {type(e).__name__}: {e}"[:200]


def forged_pair(store: str, node: int) -> tuple[Path, Path]:
    """A certificate naming node `node` of the store, signed by a CA of our own."""
    now = dt.datetime.now(dt.UTC)
    ca = pki.issue_ca(store, now)
    leaf = pki.issue_leaf(ca, Identity.node(store, node), now)
    tmp = Path(tempfile.mkdtemp())
    (tmp / "tls.crt").write_bytes(leaf.cert_pem)
    (tmp / "tls.key").write_bytes(leaf.key_pem)
    return tmp / "tls.crt", tmp / "tls.key"


def intruder(ns: argparse.Namespace) -> dict[str, Any]:
    svc, pod = ns.service, ns.pod
    bare = _ctx()
    peer_hello = framing.hello(framing.PEER_MAGIC, 1, 1)
    out: dict[str, Any] = {
        "api": http(f"https://{svc}:8000/v1/kv/probe", bare),
        "api_put": http(f"https://{svc}:8000/v1/kv/probe", bare, "PUT", body=b"x"),
        "wire": wire_unauthenticated(svc, bare),
        "admin": http(f"https://{pod}:8001/v1/status", bare),
        "admin_consistency": http(
            f"https://{pod}:8001/v1/admin/consistency",
            bare,
            "POST",
            body=json.dumps({"mode": "eventual"}).encode(),
        ),
        "peer": tls_exchange(pod, 7000, bare, peer_hello),
    }
    forged = _ctx(cert=forged_pair(ns.store, 1))
    out["forged_admin"] = http(f"https://{pod}:8001/v1/status", forged)
    out["forged_peer"] = tls_exchange(pod, 7000, forged, peer_hello)
    out["forged_api"] = http(f"https://{svc}:8000/v1/kv/probe", forged)
    return out


def _creds(d: Path) -> tuple[str, Path, tuple[Path, Path] | None, str]:
    token = (d / "token").read_text().strip()
    cert = (d / "tls.crt", d / "tls.key") if (d / "tls.crt").exists() else None
    return token, d / "ca.crt", cert, (d / "url").read_text().strip()


def user(ns: argparse.Namespace) -> dict[str, Any]:
    token, ca, cert, url = _creds(Path(ns.creds))
    by_cert = ns.auth == "cert"
    ctx = _ctx(ca, cert if by_cert else None)
    tok = None if by_cert else token
    key = f"{url}/v1/kv/{ns.key}"
    return {
        "put": http(key, ctx, "PUT", tok, b"v"),
        "get": http(key, ctx, "GET", tok),
        "status": http(f"{url}/v1/status", ctx, "GET", tok),
    }


def watch(ns: argparse.Namespace) -> dict[str, Any]:
    token, ca, _, url = _creds(Path(ns.creds))
    ctx = _ctx(ca)
    seen: list[tuple[float, str]] = []
    stop = time.monotonic() + ns.seconds
    while time.monotonic() < stop:
        seen.append((time.time(), http(f"{url}/v1/kv/watch", ctx, "GET", token)))
        time.sleep(0.2)
    return {"seen": seen}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("intruder")
    i.add_argument("--service", required=True, help="the client Service's host name")
    i.add_argument("--pod", required=True, help="a node pod's host name")
    i.add_argument("--store", required=True, help="<namespace>.<name>")
    u = sub.add_parser("user")
    u.add_argument("--creds", required=True)
    u.add_argument("--auth", choices=("token", "cert"), default="token")
    u.add_argument("--key", default="probe")
    w = sub.add_parser("watch")
    w.add_argument("--creds", required=True)
    w.add_argument("--seconds", type=float, default=60)
    ns = p.parse_args()
    result = {"intruder": intruder, "user": user, "watch": watch}[ns.cmd](ns)
    sys.stdout.write(MARKER + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
