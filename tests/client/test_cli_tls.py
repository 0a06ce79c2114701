"""The CLI's side of TLS: each named failure becomes one line and its exit code, and
--insecure says once what it turns off."""

from __future__ import annotations

import pytest

from shardset.cli import fail, main
from shardset.tlserrors import (
    CertificateExpired,
    Forbidden,
    MissingToken,
    TlsError,
    TokenRejected,
    UnknownCA,
    WrongHostName,
)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UnknownCA("TLS: not signed by the CA in /x/ca.crt"), 2),
        (CertificateExpired("TLS: your client certificate expired", ours=True), 2),
        (CertificateExpired("TLS: the node's certificate expired", ours=False), 1),
        (WrongHostName("TLS: for DNS:a, not for host 'b'"), 2),
        (MissingToken("no credentials"), 2),
        (TokenRejected("revoked"), 1),
        (Forbidden("forbidden (403: role read may not do kv.write)"), 1),
    ],
)
def test_each_named_failure_is_one_line_and_its_exit_code(
    capsys: pytest.CaptureFixture[str], error: TlsError, code: int
) -> None:
    assert fail(error) == code
    assert capsys.readouterr().err == f"shardset: {error}\n"


def test_insecure_says_once_what_it_turns_off(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SHARDSET_CACHE", "/nonexistent")
    rc = main(["--insecure", "--endpoints", "https://127.0.0.1:9", "get", "k"])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.count("--insecure:") == 1
    assert "no TLS" in err
    assert "http://127.0.0.1:9" in err  # the endpoint, made plain
