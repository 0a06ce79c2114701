"""Where the CLI finds the store and its credentials: flags, environment, config file.

Each setting is taken from the first place that has it, in this order:

1. a flag: `--endpoints`, `--cacert`, `--cert`, `--key`, `--token` or `--token-file`;
2. the environment: `SHARDSET_ENDPOINTS`, `SHARDSET_CACERT`, `SHARDSET_CERT`,
   `SHARDSET_KEY`, `SHARDSET_TOKEN` or `SHARDSET_TOKEN_FILE`;
3. the config file: `--config`, else `SHARDSET_CONFIG`, else
   `~/.config/shardset/config.yaml` if it exists: YAML with the keys `endpoints` (a
   list or a comma-separated string), `cacert`, `cert`, `key`, `token`, `token-file`
   (relative paths are relative to the file);
4. when none of those names endpoints: the local cluster started last with `shardset
   local up`, with the config file it wrote.

A token given at one level hides a token file of a lower one. `--insecure` drops every
TLS setting and speaks plain HTTP and TCP.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shardset.cliargs import UsageError, endpoint_list
from shardset.clienttls import ClientTls

KEYS = ("endpoints", "cacert", "cert", "key", "token", "token-file")
ENV = {k: "SHARDSET_" + k.upper().replace("-", "_") for k in KEYS}
# The flags' argparse dests (`--key` is not `key`: put and get take a KEY argument).
DEST = {k: "tls_key" if k == "key" else k.replace("-", "_") for k in KEYS}
DEFAULT_CONFIG = Path.home() / ".config" / "shardset" / "config.yaml"
INSECURE_SAYS = (
    "--insecure: plain HTTP and TCP: no TLS (requests, values and tokens travel in the "
    "clear and can be altered), no check of the nodes' certificates, no client "
    "certificate or token sent"
)


@dataclass(frozen=True)
class Settings:
    endpoints: list[str]
    tls: ClientTls | None


def resolve(
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    *,
    config: Path | None = None,
    insecure: bool = False,
    local_config: Path | None = None,
    local_endpoints: list[str] | None = None,
) -> Settings:
    """The settings, each from the first level that has it (flag > env > file).
    `flags` maps DEST's names to a value or None; `config` is --config."""
    levels: list[dict[str, Any]] = [_flags(flags), _env(env), _file_level(config, env)]
    endpoints = _first(levels, "endpoints")
    if endpoints is None and local_endpoints:
        endpoints = local_endpoints
        if local_config is not None and local_config.is_file():
            levels.append(load_file(local_config))
    if endpoints is None:
        raise UsageError(
            "no endpoints: pass --endpoints, set SHARDSET_ENDPOINTS, name them in the "
            "config file or start a local cluster (shardset local up)"
        )
    if insecure:
        return Settings([_plain(e) for e in endpoints], None)
    return Settings(endpoints, _tls(levels))


def _tls(levels: list[dict[str, Any]]) -> ClientTls | None:
    cacert, cert, key = (_first(levels, k) for k in ("cacert", "cert", "key"))
    token = _token(levels)
    if cacert is None and cert is None and key is None and token is None:
        return None  # nothing asked for: an insecure store, or https with the system's CAs
    return ClientTls(cafile=cacert, cert=cert, key=key, token=token)


def _token(levels: list[dict[str, Any]]) -> str | None:
    for level in levels:
        if level.get("token") is not None:
            return str(level["token"])
        if level.get("token-file") is not None:
            return read_token(Path(level["token-file"]))
    return None


def read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise UsageError(f"token file {path}: {e.strerror or e}") from None
    if not token:
        raise UsageError(f"token file {path} is empty")
    return token


def _first(levels: list[dict[str, Any]], key: str) -> Any:
    for level in levels:
        if level.get(key) is not None:
            return level[key]
    return None


def _flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: flags.get(DEST[k]) for k in KEYS}
    for k in ("cacert", "cert", "key", "token-file"):
        if out[k] is not None:
            out[k] = Path(out[k])
    return out


def _env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, var in ENV.items():
        raw = env.get(var, "").strip()
        if not raw:
            continue
        if k == "endpoints":
            out[k] = _endpoints(raw, var)
        else:
            out[k] = raw if k == "token" else Path(raw)
    return out


def _file_level(config: Path | None, env: Mapping[str, str]) -> dict[str, Any]:
    if config is not None:
        return load_file(config)
    if env.get("SHARDSET_CONFIG", "").strip():
        return load_file(Path(env["SHARDSET_CONFIG"].strip()))
    if DEFAULT_CONFIG.is_file():
        return load_file(DEFAULT_CONFIG)
    return {}


def load_file(path: Path) -> dict[str, Any]:
    """A config file's settings; UsageError naming the file and what is wrong."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise UsageError(f"config file {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise UsageError(f"config file {path} is not YAML: {e}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UsageError(f"config file {path}: want a mapping of {', '.join(KEYS)}")
    unknown = sorted(set(map(str, raw)) - set(KEYS))
    if unknown:
        raise UsageError(
            f"config file {path}: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})"
        )
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if v is None:
            continue
        if k == "endpoints":
            text = ",".join(map(str, v)) if isinstance(v, list) else str(v)
            out[k] = _endpoints(text, f"config file {path}: endpoints")
        elif k == "token":
            out[k] = str(v)
        else:
            out[k] = path.parent / Path(str(v)).expanduser()
    return out


def _endpoints(text: str, where: str) -> list[str]:
    try:
        return endpoint_list(text)
    except argparse.ArgumentTypeError as e:
        raise UsageError(f"{where}: {e}") from None


def _plain(url: str) -> str:
    return "http://" + url.removeprefix("https://").removeprefix("http://")


def add_flags(p: argparse.ArgumentParser) -> None:
    """The connection flags every client command takes."""
    g = p.add_argument_group(
        "connection (each: flag, else environment, else config file; see docs/cli.md)"
    )
    g.add_argument(
        "--endpoints",
        type=endpoint_list,
        help="comma-separated node API URLs (https://HOST:PORT); env SHARDSET_ENDPOINTS",
    )
    g.add_argument("--cacert", type=Path, help="CA file to trust (env SHARDSET_CACERT)")
    g.add_argument("--cert", type=Path, help="client certificate (env SHARDSET_CERT)")
    g.add_argument(
        "--key", dest=DEST["key"], type=Path, help="client certificate's key (env SHARDSET_KEY)"
    )
    tok = g.add_mutually_exclusive_group()
    tok.add_argument("--token", help="bearer token (env SHARDSET_TOKEN)")
    tok.add_argument(
        "--token-file", type=Path, help="file holding the token (env SHARDSET_TOKEN_FILE)"
    )
    g.add_argument(
        "--config",
        type=Path,
        help="config file (env SHARDSET_CONFIG; default ~/.config/shardset/config.yaml)",
    )
    g.add_argument("--insecure", action="store_true", help="plain HTTP and TCP: no TLS, no auth")


def from_env() -> dict[str, str]:
    return dict(os.environ)
