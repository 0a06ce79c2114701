"""The certificates and the CLI's credentials of a TLS `shardset local` cluster.

Laid out in `<data-dir>/tls/` as the operator lays out a store's Secrets:

- `ca/` : `ca.crt`, `ca.key` (the store's CA; read by nobody but `shardset local`);
- `nodes/` : `ca.crt` and `node-<id>.crt` / `node-<id>.key` for every node (what
  a node's `--tls-dir` holds in Kubernetes), for 127.0.0.1 and localhost;
- `operator/` : `ca.crt`, `tls.crt`, `tls.key`: the operator identity `shardset local`
  uses for its own admin calls (leader balancing, rebuild-node, creating the CLI user);
- `cli/` : `ca.crt` and `token`, the bearer token of user `local-admin` (role admin).

Leaves are re-issued by `ensure` once past two thirds of their lifetime, so a local
cluster kept for months goes on starting.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from pathlib import Path

from shardset_proto import pki
from shardset_proto.identity import Identity
from shardset_proto.tlsfiles import TlsFiles

CLI_USER = "local-admin"
TOKEN_PREFIX = "sst_"
HOSTS = ("localhost",)
IPS = ("127.0.0.1",)


def store_key(data_dir: Path) -> str:
    """`local.<name>`, the name from the data directory's (lower case, [a-z0-9-])."""
    name = re.sub(r"[^a-z0-9-]+", "-", data_dir.name.lower()).strip("-")[:40].strip("-")
    return f"local.{name or 'store'}"


class LocalPki:
    def __init__(self, data_dir: Path, store: str) -> None:
        self.root = data_dir / "tls"
        self.store = store

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def nodes_dir(self) -> Path:
        return self.root / "nodes"

    @property
    def operator(self) -> TlsFiles:
        return TlsFiles(self.root / "operator")

    @property
    def ca_file(self) -> Path:
        return self.ca_dir / "ca.crt"

    @property
    def token_file(self) -> Path:
        return self.root / "cli" / "token"

    def ca(self) -> pki.KeyPair:
        """The store's CA, made the first time."""
        cert, key = self.ca_file, self.ca_dir / "ca.key"
        if not cert.exists():
            pair = pki.issue_ca(self.store, _now())
            TlsFiles(self.ca_dir).write(pair.cert_pem, None, None)
            _write_private(key, pair.key_pem)
            return pair
        return pki.KeyPair(cert.read_bytes(), key.read_bytes())

    def ensure(self, node_ids: list[int]) -> None:
        """Every file exists and no leaf is due for renewal (re-issued if it is)."""
        ca = self.ca()
        for node in node_ids:
            self.ensure_node(node, ca)
        op = self.operator
        if _due(op.cert):
            pair = pki.issue_leaf(ca, Identity.operator(self.store), _now())
            op.write(ca.cert_pem, pair.cert_pem, pair.key_pem)
        TlsFiles(self.token_file.parent).write(ca.cert_pem, None, None)
        if not self.token_file.exists():
            _write_private(self.token_file, (new_token() + "\n").encode())

    def ensure_node(self, node: int, ca: pki.KeyPair | None = None) -> None:
        ca = ca or self.ca()
        TlsFiles(self.nodes_dir).write(ca.cert_pem, None, None)
        cert = self.nodes_dir / f"node-{node}.crt"
        if _due(cert):
            pair = pki.issue_leaf(ca, Identity.node(self.store, node), _now(), dns=HOSTS, ips=IPS)
            _write_private(self.nodes_dir / f"node-{node}.key", pair.key_pem)
            cert.write_bytes(pair.cert_pem)

    def token(self) -> str:
        return self.token_file.read_text().strip()

    def user_files(self, name: str) -> TlsFiles:
        """A client certificate for user `name` (made once) in tls/users/<name>/; the
        store honours it while the user exists (PutUser gives it its role)."""
        files = TlsFiles(self.root / "users" / name)
        if _due(files.cert):
            ca = self.ca()
            pair = pki.issue_leaf(ca, Identity.user(self.store, name), _now())
            files.write(ca.cert_pem, pair.cert_pem, pair.key_pem)
        return files


def new_token() -> str:
    """A bearer token as the store's users get them (shardset_proto.identity)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _due(cert: Path) -> bool:
    try:
        return pki.info_pem(cert.read_bytes()).due(_now())
    except (OSError, pki.PkiError):
        return True


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.touch(0o600)
    tmp.chmod(0o600)
    tmp.write_bytes(data)
    tmp.replace(path)
