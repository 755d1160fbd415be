"""host:port as people write it, parsed in one place: listen addresses (`PFI_LISTEN_ADDRESS`,
`PFI_UI_LISTEN_ADDRESS`), `Host` headers, node-exporter's `instance` label and the report link.
Pure: no name resolution, no sockets."""

from __future__ import annotations

import ipaddress

__all__ = ["ALL_INTERFACES", "AddressError", "client_host", "parse_listen_address", "split_host_port"]

ALL_INTERFACES = "::"  # every interface, dual stack (app.service.web.listen)


class AddressError(ValueError):
    """An address that cannot be read; the message says which and why."""


def split_host_port(text: str) -> tuple[str, str | None]:
    """`[fd00::1]:8080` -> ("fd00::1", "8080"); `[fd00::1]` and a bare `fd00::1` -> (address, None)
    (a bare IPv6 address has no port: its last group would be ambiguous); `host:port`, `:port`,
    `*:port` -> (host, port); `host` -> (host, None). The host loses its brackets, nothing else is
    checked. Raises AddressError for a '[' without ']' or something after ']' other than ':port'."""
    text = text.strip()
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        if not sep:
            raise AddressError("'[' without ']'")
        if rest and not rest.startswith(":"):
            raise AddressError("expected ':port' after ']'")
        return inner, (rest[1:] if rest else None)
    if text.count(":") > 1:
        return text, None
    host, sep, port = text.partition(":")
    return host, (port if sep else None)


def _port(text: str | None, address: str, default_port: int | None) -> int:
    if not text:
        if default_port is None:
            raise AddressError(f"listen address {address!r} has no port")
        return default_port
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise AddressError(f"listen address {address!r}: port {text!r} is not a number 0-65535")
    return int(text)


def _host(text: str, address: str) -> str:
    if text in ("", "*"):
        return ALL_INTERFACES
    if ":" in text:
        try:
            ipaddress.IPv6Address(text.split("%", 1)[0])
        except ValueError:
            raise AddressError(f"listen address {address!r}: {text!r} is not an IPv6 address") from None
        return text
    if any(c.isspace() or c in "/[]" for c in text):
        raise AddressError(f"listen address {address!r}: {text!r} is not a host name or address")
    return text


def parse_listen_address(address: str, default_port: int | None = None) -> tuple[str, int]:
    """`[::]:8080`, `[::]`, `::`, `[fd00::1]:8080`, `fd00::1`, `0.0.0.0:8080`, `:8080`, `*:8080`,
    `host:port`, `host` -> (host, port). An empty host (`:8080`) or `*` means every interface, dual
    stack (`::`). Raises AddressError with the reason for anything else."""
    text = address.strip()
    if not text:
        raise AddressError("listen address is empty")
    try:
        host, port = split_host_port(text)
    except AddressError as exc:
        raise AddressError(f"listen address {address!r}: {exc}") from None
    if text.startswith("[") and ":" not in host:
        raise AddressError(f"listen address {address!r}: brackets hold an IPv6 address, not {host!r}")
    return _host(host, address), _port(port, address, default_port)


def client_host(host: str) -> str:
    """The host part of a URL that reaches a server listening on `host` from this machine."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == ALL_INTERFACES:
        return "[::1]"
    return f"[{host}]" if ":" in host else host
