"""Where the CLI takes each connection setting from: flag > environment > config file >
the last local cluster (shardset.clientconfig), and what it says of a bad file."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardset.cli import parser
from shardset.cliargs import UsageError
from shardset.clientconfig import DEST, INSECURE_SAYS, resolve

NO_FLAGS = {d: None for d in DEST.values()}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_flag_beats_the_environment_which_beats_the_file(tmp_path: Path) -> None:
    config = write(
        tmp_path / "c.yaml",
        "endpoints: [https://file:1]\ncacert: file-ca.crt\n"
        "cert: f.crt\nkey: f.key\ntoken: file-t\n",
    )
    env = {
        "SHARDSET_ENDPOINTS": "https://env:1",
        "SHARDSET_CACERT": "/env/ca.crt",
        "SHARDSET_TOKEN": "env-t",
    }
    flags = {**NO_FLAGS, "endpoints": ["https://flag:1"], "token": "flag-t"}
    s = resolve(flags, env, config=config)
    assert s.endpoints == ["https://flag:1"]
    assert s.tls is not None
    assert s.tls.token == "flag-t"
    assert s.tls.cafile == Path("/env/ca.crt")
    # Only the file names a certificate: relative to the file's directory.
    assert s.tls.cert == tmp_path / "f.crt" and s.tls.key == tmp_path / "f.key"

    s = resolve(NO_FLAGS, env, config=config)
    assert s.endpoints == ["https://env:1"] and s.tls is not None and s.tls.token == "env-t"
    s = resolve(NO_FLAGS, {}, config=config)
    assert s.endpoints == ["https://file:1"] and s.tls is not None
    assert s.tls.token == "file-t" and s.tls.cafile == tmp_path / "file-ca.crt"


def test_the_config_file_comes_from_shardset_config_when_no_flag(tmp_path: Path) -> None:
    config = write(tmp_path / "c.yaml", "endpoints: https://a:1,https://b:2\n")
    s = resolve(NO_FLAGS, {"SHARDSET_CONFIG": str(config)})
    assert s.endpoints == ["https://a:1", "https://b:2"] and s.tls is None
    other = write(tmp_path / "d.yaml", "endpoints: [https://c:3]\n")
    s = resolve(NO_FLAGS, {"SHARDSET_CONFIG": str(config)}, config=other)
    assert s.endpoints == ["https://c:3"]


def test_a_token_at_a_higher_level_hides_a_token_file_below(tmp_path: Path) -> None:
    token_file = write(tmp_path / "token", "sst_from_file\n")
    config = write(tmp_path / "c.yaml", f"endpoints: [https://a:1]\ntoken-file: {token_file}\n")
    s = resolve(NO_FLAGS, {}, config=config)
    assert s.tls is not None and s.tls.token == "sst_from_file"
    s = resolve(NO_FLAGS, {"SHARDSET_TOKEN": "sst_env"}, config=config)
    assert s.tls is not None and s.tls.token == "sst_env"
    flags = {**NO_FLAGS, "endpoints": ["https://a:1"], "token_file": token_file}
    s = resolve(flags, {"SHARDSET_TOKEN": "sst_env"})
    assert s.tls is not None and s.tls.token == "sst_from_file"


def test_the_last_local_cluster_is_used_only_when_nothing_names_endpoints(
    tmp_path: Path,
) -> None:
    local = write(tmp_path / "local.yaml", "endpoints: [https://l:1]\ntoken: sst_local\n")
    s = resolve(NO_FLAGS, {}, local_config=local, local_endpoints=["https://l:1"])
    assert s.endpoints == ["https://l:1"] and s.tls is not None and s.tls.token == "sst_local"
    flags = {**NO_FLAGS, "endpoints": ["https://x:1"]}
    s = resolve(flags, {}, local_config=local, local_endpoints=["https://l:1"])
    assert s.endpoints == ["https://x:1"] and s.tls is None  # nothing of the local cluster's


def test_insecure_drops_tls_and_speaks_plain_http(tmp_path: Path) -> None:
    flags = {**NO_FLAGS, "endpoints": ["https://a:1"], "token": "t", "cacert": tmp_path}
    s = resolve(flags, {}, insecure=True)
    assert s.endpoints == ["http://a:1"] and s.tls is None
    assert "no TLS" in INSECURE_SAYS and "no client certificate or token" in INSECURE_SAYS


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("endpoints: [https://a:1]\ntokn: x\n", ["unknown key 'tokn'"]),
        ("- a\n- b\n", ["want a mapping"]),
        ("endpoints: [ftp://a:1]\n", ["endpoints", "not a node API URL"]),
        ("endpoints: [https://a:1\n", ["not YAML"]),
    ],
)
def test_a_bad_config_file_is_named(tmp_path: Path, text: str, words: list[str]) -> None:
    config = write(tmp_path / "c.yaml", text)
    with pytest.raises(UsageError) as err:
        resolve(NO_FLAGS, {}, config=config)
    assert str(config) in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_a_missing_config_file_or_token_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"nope\.yaml"):
        resolve(NO_FLAGS, {"SHARDSET_CONFIG": str(tmp_path / "nope.yaml")})
    flags = {**NO_FLAGS, "endpoints": ["https://a:1"], "token_file": tmp_path / "none"}
    with pytest.raises(UsageError, match=r"token file .*none"):
        resolve(flags, {})


def test_key_flag_and_a_commands_key_argument_do_not_collide() -> None:
    ns = parser().parse_args(["--key", "k.pem", "--cert", "c.pem", "get", "mykey"])
    assert ns.key == "mykey" and str(ns.tls_key) == "k.pem" and str(ns.cert) == "c.pem"
