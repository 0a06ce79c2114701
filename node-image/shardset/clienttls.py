"""What a client brings to a TLS store: the CA it trusts, its certificate, its token.

A `ClientTls` is given to `shardset.client.Client`; the CLI builds one from flags,
environment and config file (shardset.clientconfig). The ssl context trusts only the CA
file given (or the system's store when none is given), checks host names, speaks TLS
1.3 and presents the client certificate when there is one. A token travels as
`Authorization: Bearer` over HTTPS and as the wire protocol's `auth` request.
"""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

from shardset.tlserrors import BadCredentials, CertificateExpired, when
from shardset_proto import pki
from shardset_proto.tlsfiles import TlsFiles

TOKEN_FILE = "token"  # beside ca.crt in a user's Secret


@dataclass(frozen=True, slots=True)
class ClientTls:
    cafile: Path | None = None  # None: the system's trusted CAs
    cert: Path | None = None
    key: Path | None = None
    token: str | None = None

    @classmethod
    def from_dir(cls, directory: Path) -> ClientTls:
        """A mounted Secret (a ShardSetUser's, or the layout of shardset_proto.tlsfiles):
        `ca.crt`, and `tls.crt`/`tls.key` and `token` where present."""
        files = TlsFiles(directory)
        if not files.ca.exists():
            raise BadCredentials(f"{files.ca} does not exist (a TLS directory holds ca.crt)")
        token_file = directory / TOKEN_FILE
        return cls(
            cafile=files.ca,
            cert=files.cert if files.has_cert() else None,
            key=files.key if files.has_cert() else None,
            token=(token_file.read_text().strip() or None) if token_file.exists() else None,
        )

    @property
    def has_cert(self) -> bool:
        return self.cert is not None

    def context(self, now: dt.datetime | None = None) -> ssl.SSLContext:
        """The ssl context for HTTPS and the wire protocol; BadCredentials naming the
        file that is missing or does not load, CertificateExpired for our own
        certificate past its notAfter (checked here, before any node can say so in
        a TLS alert that the client would only see as a dropped connection)."""
        if (self.cert is None) != (self.key is None):
            raise BadCredentials("a client certificate needs both --cert and --key")
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        if self.cafile is not None:
            try:
                ctx.load_verify_locations(cafile=str(self.cafile))
            except (FileNotFoundError, IsADirectoryError):
                raise BadCredentials(f"CA file {self.cafile} does not exist") from None
            except ssl.SSLError as e:
                raise BadCredentials(
                    f"CA file {self.cafile} holds no PEM certificate: {e.reason or e}"
                ) from None
        if self.cert is not None and self.key is not None:
            self._check_own_cert(now or dt.datetime.now(dt.UTC))
            try:
                ctx.load_cert_chain(str(self.cert), str(self.key))
            except (FileNotFoundError, IsADirectoryError) as e:
                raise BadCredentials(f"{e.filename} does not exist") from None
            except ssl.SSLError as e:
                raise BadCredentials(
                    f"client certificate {self.cert} and key {self.key} do not load as a "
                    f"pair: {e.reason or e}"
                ) from None
        return ctx

    def _check_own_cert(self, now: dt.datetime) -> None:
        assert self.cert is not None
        try:
            info = pki.info_pem(self.cert.read_bytes())
        except OSError as e:
            raise BadCredentials(f"client certificate {self.cert}: {e.strerror or e}") from None
        except pki.PkiError as e:
            raise BadCredentials(f"client certificate {self.cert}: {e}") from None
        if now > info.not_after:
            raise CertificateExpired(
                f"TLS: your client certificate {self.cert} ({info.subject}) expired on "
                f"{when(info.not_after)}; get a new one",
                ours=True,
            )
        if now < info.not_before:
            raise CertificateExpired(
                f"TLS: your client certificate {self.cert} ({info.subject}) is not valid "
                f"before {when(info.not_before)} (is this machine's clock right?)",
                ours=True,
            )
