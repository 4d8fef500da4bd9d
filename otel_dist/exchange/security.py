"""Transport security for every Flight client and server of otel_dist, in one place.

Two independent mechanisms, both off by default (the local demo runs in plain gRPC):

* **TLS** (``grpc+tls://``): a server with a certificate and key (``--tls-cert``,
  ``--tls-key``) serves TLS; a client verifies servers against ``--tls-ca`` (PEM, e.g. the
  certificate of a private CA or a self-signed certificate), or the system roots without it.
  With ``verify_client`` (``--tls-verify-client``) servers also require a client certificate
  signed by ``--tls-ca`` (mutual TLS); processes that are both server and client (workers,
  coordinators) present their own certificate, the ``query`` command its ``--tls-cert``.
* **Two shared secrets**: every call carries ``authorization: Bearer <secret>`` (client
  middleware) and servers refuse calls without the right one with ``UNAUTHENTICATED`` (server
  middleware, compared in constant time).

  - The *client token* (``OTEL_DIST_AUTH_TOKEN`` or ``--auth-token-file``) is what clients
    present to the coordinator (Flight, query pages) and what every ``/metrics`` endpoint
    requires. Clients hold it.
  - The *internal secret* (``OTEL_DIST_INTERNAL_SECRET``, or a file: ``--internal-secret-file``
    / ``OTEL_DIST_INTERNAL_SECRET_FILE``) is what the coordinator presents to workers and
    workers to each other; workers accept nothing else. Clients never hold it, so a client
    cannot submit tasks or read another query's buckets from a worker directly (as Trino's
    ``internal-communication.shared-secret``). Without one, the client token serves as the
    internal secret too (``internal``), so one-token set-ups keep working, unseparated.

  Secrets come from the environment or files, never from the command line (which any local
  user can read in the process list), and are never logged: ``SecurityConfig`` leaves them out
  of its ``repr``.

When TLS is configured, ``grpc://`` URLs are upgraded to ``grpc+tls://`` (``secure_url``), so
the URLs people type keep working and nothing is sent in clear by mistake.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow.flight as flight

from otel_dist.settings import read

AUTH_TOKEN_ENV = "OTEL_DIST_AUTH_TOKEN"
INTERNAL_SECRET_ENV = "OTEL_DIST_INTERNAL_SECRET"
INTERNAL_SECRET_FILE_ENV = "OTEL_DIST_INTERNAL_SECRET_FILE"
TLS_CERT_ENV = "OTEL_DIST_TLS_CERT"
TLS_KEY_ENV = "OTEL_DIST_TLS_KEY"
TLS_CA_ENV = "OTEL_DIST_TLS_CA"
AUTH_HEADER = "authorization"
_BEARER = "Bearer "
_PLAIN_SCHEMES = ("grpc://", "grpc+tcp://")
_TLS_SCHEME = "grpc+tls://"


class SecurityError(ValueError):
    """Security settings that cannot work (a missing file, a certificate without its key)."""


@dataclass(frozen=True)
class SecurityConfig:
    """TLS material (file paths, PEM), the client token and the internal secret of one
    process."""

    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    token: str | None = field(default=None, repr=False)
    verify_client: bool = False
    internal_secret: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SecurityError("a TLS certificate needs its key and a key its certificate")
        if self.verify_client and not self.tls_ca:
            raise SecurityError("verifying client certificates needs a CA (--tls-ca)")
        for what, path in (("certificate", self.tls_cert), ("key", self.tls_key)):
            if path and not os.path.isfile(path):
                raise SecurityError(f"TLS {what} file {path} does not exist")
        if self.tls_ca and not os.path.isfile(self.tls_ca):
            raise SecurityError(f"TLS CA file {self.tls_ca} does not exist")
        if self.token is not None and not self.token.strip():
            raise SecurityError("the auth token is empty")
        if self.internal_secret is not None and not self.internal_secret.strip():
            raise SecurityError("the internal secret is empty")

    @property
    def tls(self) -> bool:
        """Whether connections use TLS (a server certificate or a CA to check servers by)."""
        return bool(self.tls_cert or self.tls_ca)

    @property
    def serves_tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def enabled(self) -> bool:
        return self.tls or self.token is not None or self.internal_secret is not None

    def internal(self) -> SecurityConfig:
        """The settings of cluster-internal calls (coordinator to worker, worker to worker):
        the same TLS, with the internal secret as the token (the client token without one)."""
        secret = self.internal_secret if self.internal_secret is not None else self.token
        return replace(self, token=secret, internal_secret=None)

    def describe(self) -> str:
        """What is on, for start-up messages (never the token itself)."""
        parts = []
        if self.serves_tls or self.tls:
            parts.append("TLS" + (" with client certificates" if self.verify_client else ""))
        if self.token is not None:
            parts.append("token authentication")
        if self.internal_secret is not None:
            parts.append("an internal secret")
        return " and ".join(parts) or "no TLS, no authentication"

    @staticmethod
    def from_options(
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        tls_ca: str | os.PathLike[str] | None = None,
        token_file: str | os.PathLike[str] | None = None,
        verify_client: bool = False,
        env: Mapping[str, str] | None = None,
        internal_secret_file: str | os.PathLike[str] | None = None,
    ) -> SecurityConfig:
        """Command-line options first, then ``OTEL_DIST_TLS_CERT``/``_KEY``/``_CA``,
        ``OTEL_DIST_AUTH_TOKEN``, ``OTEL_DIST_INTERNAL_SECRET_FILE`` and
        ``OTEL_DIST_INTERNAL_SECRET``."""
        env = os.environ if env is None else env
        token = read(AUTH_TOKEN_ENV, env) or None
        if token_file is not None:
            token = _secret_file(token_file, "auth token")
        secret = read(INTERNAL_SECRET_ENV, env) or None
        internal_secret_file = internal_secret_file or read(INTERNAL_SECRET_FILE_ENV, env) or None
        if internal_secret_file is not None:
            secret = _secret_file(internal_secret_file, "internal secret")
        return SecurityConfig(
            tls_cert=_path(tls_cert) or read(TLS_CERT_ENV, env) or None,
            tls_key=_path(tls_key) or read(TLS_KEY_ENV, env) or None,
            tls_ca=_path(tls_ca) or read(TLS_CA_ENV, env) or None,
            token=token.strip() if token else None,
            verify_client=verify_client,
            internal_secret=secret.strip() if secret else None,
        )


NO_SECURITY = SecurityConfig()


def _secret_file(path: str | os.PathLike[str], what: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            secret = handle.read().strip()
    except OSError as error:
        raise SecurityError(f"{what} file {os.fspath(path)}: {error.strerror}") from None
    if not secret:
        raise SecurityError(f"{what} file {os.fspath(path)} is empty")
    return secret


def _path(value: str | os.PathLike[str] | None) -> str | None:
    return os.fspath(value) if value is not None else None


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise SecurityError(f"{path}: {error.strerror}") from None


# ---- servers -------------------------------------------------------------------------------


def server_location(host: str, port: int, security: SecurityConfig) -> str:
    scheme = _TLS_SCHEME if security.serves_tls else "grpc://"
    return f"{scheme}{host}:{port}"


_CLIENT_REFUSAL = "unauthenticated: this server requires a valid auth token (OTEL_DIST_AUTH_TOKEN)"
_INTERNAL_REFUSAL = (
    "unauthenticated: this worker takes calls from its cluster only: it requires the internal "
    "secret (OTEL_DIST_INTERNAL_SECRET), which clients do not hold"
)


def server_options(security: SecurityConfig, internal: bool = False) -> dict[str, Any]:
    """Keyword arguments of ``FlightServerBase.__init__``: TLS material and the token check.
    ``internal`` (workers): the internal secret is required instead of the client token."""
    if internal:
        security = security.internal()
    options: dict[str, Any] = {}
    if security.serves_tls:
        assert security.tls_cert is not None and security.tls_key is not None
        options["tls_certificates"] = [
            flight.CertKeyPair(_read(security.tls_cert), _read(security.tls_key))
        ]
        if security.verify_client:
            assert security.tls_ca is not None
            options["verify_client"] = True
            options["root_certificates"] = _read(security.tls_ca)
    if security.token is not None:
        refusal = _INTERNAL_REFUSAL if internal else _CLIENT_REFUSAL
        options["middleware"] = {"auth": TokenServerMiddlewareFactory(security.token, refusal)}
    return options


class TokenServerMiddlewareFactory(flight.ServerMiddlewareFactory):
    """Refuses every call that does not carry the shared-secret token (UNAUTHENTICATED)."""

    def __init__(self, token: str, refusal: str = _CLIENT_REFUSAL) -> None:
        super().__init__()
        self._expected = (_BEARER + token).encode()
        self._refusal = refusal

    def start_call(
        self, info: flight.CallInfo, headers: dict[str, list[str | bytes]]
    ) -> flight.ServerMiddleware | None:
        values = headers.get(AUTH_HEADER) or []
        for value in values:
            raw = value.encode() if isinstance(value, str) else value
            if hmac.compare_digest(raw, self._expected):
                return None
        raise flight.FlightUnauthenticatedError(self._refusal)


# ---- clients -------------------------------------------------------------------------------


def secure_url(url: str, security: SecurityConfig) -> str:
    """The URL to dial: ``grpc://`` becomes ``grpc+tls://`` when TLS is configured."""
    if security.tls:
        for scheme in _PLAIN_SCHEMES:
            if url.startswith(scheme):
                return _TLS_SCHEME + url[len(scheme) :]
    return url


def client_options(security: SecurityConfig) -> dict[str, Any]:
    """Keyword arguments of ``FlightClient.__init__``: CA, client certificate, token."""
    options: dict[str, Any] = {}
    if security.tls_ca:
        options["tls_root_certs"] = _read(security.tls_ca)
    if security.tls_cert and security.tls_key:
        options["cert_chain"] = _read(security.tls_cert)
        options["private_key"] = _read(security.tls_key)
    if security.token is not None:
        options["middleware"] = [_TokenClientMiddlewareFactory(security.token)]
    return options


class _TokenClientMiddleware(flight.ClientMiddleware):
    def __init__(self, header: str) -> None:
        super().__init__()
        self._header = header

    def sending_headers(self) -> dict[str, str]:
        return {AUTH_HEADER: self._header}


class _TokenClientMiddlewareFactory(flight.ClientMiddlewareFactory):
    """Adds the token to every call of a client."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._header = _BEARER + token

    def start_call(self, info: flight.CallInfo) -> flight.ClientMiddleware:
        return _TokenClientMiddleware(self._header)
