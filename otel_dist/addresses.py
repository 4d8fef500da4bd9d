"""Addresses as people type them, turned into Flight URLs, and ports checked before binding.

Every address option takes ``host:port`` (plain gRPC), ``grpc://host:port``,
``grpc+tcp://host:port`` or ``grpc+tls://host:port``; anything else (``http://...``, a
missing or bad port) is refused in one line naming the option and the value. ``--workers``
also takes ``dns:///NAME:PORT`` entries: a name resolved to all its addresses.
"""

from __future__ import annotations

import errno
import re
import socket

from otel_dist.coordinator.membership import DNS_SCHEME, DnsName

_SCHEMES = ("grpc://", "grpc+tcp://", "grpc+tls://")
# A DNS name, an IPv4 address, or an IPv6 address (in brackets, as in a URL).
_HOST = re.compile(r"[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+(%[A-Za-z0-9._-]+)?\]")


class AddressError(ValueError):
    """An address or port that cannot be used, said in one line."""


def flight_url(raw: str, what: str) -> str:
    """The Flight URL of ``raw``; ``what`` names it in the error (e.g. ``--coordinator``)."""
    text = raw.strip()
    scheme = next((s for s in _SCHEMES if text.lower().startswith(s)), None)
    if scheme is None:
        if "://" in text:
            raise AddressError(
                f"{what} {raw!r}: use host:port, grpc://host:port or grpc+tls://host:port "
                f"(not {text.split('://', 1)[0]}://)"
            )
        scheme, rest = "grpc://", text
    else:
        rest = text[len(scheme) :]
    host, port = _host_port(rest, raw, what)
    return f"{scheme}{host}:{port}"


def parse_dns_name(raw: str, what: str) -> DnsName:
    """``NAME:PORT`` or ``dns:///NAME:PORT``."""
    text = raw.strip()
    if text.lower().startswith(DNS_SCHEME):
        text = text[len(DNS_SCHEME) :]
    elif "://" in text:
        raise AddressError(f"{what} {raw!r}: use NAME:PORT or dns:///NAME:PORT")
    host, port = _host_port(text, raw, what)
    return DnsName(host.strip("[]"), port)


def parse_workers(raw: str) -> tuple[tuple[str, ...], tuple[DnsName, ...]]:
    """A comma-separated ``--workers`` value: worker URLs, and DNS names to resolve."""
    urls: list[str] = []
    names: list[DnsName] = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        if part.lower().startswith(DNS_SCHEME):
            names.append(parse_dns_name(part, "--workers"))
        else:
            urls.append(flight_url(part, "--workers"))
    return tuple(urls), tuple(names)


def _host_port(text: str, raw: str, what: str) -> tuple[str, int]:
    host, sep, port_text = text.rstrip("/").rpartition(":")
    if not sep or not host or "/" in text.rstrip("/"):
        raise AddressError(f"{what} {raw!r}: expected host:port (for example 127.0.0.1:50051)")
    try:
        port = int(port_text)
    except ValueError:
        raise AddressError(f"{what} {raw!r}: port {port_text!r} is not a number") from None
    if not 0 < port <= 65535:
        raise AddressError(f"{what} {raw!r}: port {port} is not in 1..65535")
    if _HOST.fullmatch(host) is None:
        raise AddressError(f"{what} {raw!r}: {host!r} is not a host name or IP address")
    return host, port


def check_port_free(host: str, port: int, what: str) -> None:
    """Refuse, in one line naming it, a port that something already listens on (gRPC itself
    would fail with a bare "Server did not start properly"). Port 0 is always free."""
    if port == 0:
        return
    if not 0 < port <= 65535:
        raise AddressError(f"{what} {port} is not in 0..65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise AddressError(f"cannot listen on {host}: {error.strerror or error}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise AddressError(f"{what} {port} on {host} is already in use") from None
            raise AddressError(f"cannot listen on {host}:{port}: {error.strerror}") from None
