"""Bearer-token checks for otel_dist's HTTP endpoints (the coordinator's query pages and every
process's Prometheus ``/metrics``), and the text helper that keeps any received string
printable.

A request is allowed when no token is configured, or when it carries
``Authorization: Bearer <token>`` (what Prometheus' ``authorization`` scrape setting and
``curl -H`` send), compared in constant time. Refusals are ``401`` with
``WWW-Authenticate: Bearer``. Kept free of other otel_dist imports so that both the telemetry
and the explain layers can use it.
"""

from __future__ import annotations

import hmac

UNAUTHORIZED_BODY = b"unauthorized: this endpoint needs the header Authorization: Bearer <token>\n"
WWW_AUTHENTICATE = 'Bearer realm="otel_dist"'


def bearer_allowed(header: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header value (as HTTP servers decode it: latin-1) carries
    ``token``. Always true without a token."""
    if token is None:
        return True
    if not header:
        return False
    scheme, _, credentials = header.strip().partition(" ")
    given = credentials.strip().encode("latin-1", "replace")
    # Compared even on a wrong scheme, so the time taken does not tell the two apart.
    same = hmac.compare_digest(given, token.encode("utf-8"))
    return same and scheme.lower() == "bearer"


def printable(text: str) -> str:
    """``text`` with anything UTF-8 cannot encode (lone surrogates, which a shell passes for
    invalid UTF-8 bytes) written as ``\\udcxx`` escapes, so every sink can write it."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
