"""Guards for task inputs that name a file or a URL.

Theory of operation
-------------------
A capability that reads ``csv_path`` or fetches ``csv_url`` runs on input chosen by
another node, so both are treated as hostile.

**Paths** (:func:`resolve_safe_path`, :func:`read_safe_file`) are confined to one
configured directory, the *root*. A name must be relative, must not contain ``..`` or a NUL
byte, and must resolve — every symbolic link followed — to a regular file strictly inside
the root's own resolved path. A link inside the root that points out of it is refused like
a ``../`` path. The file is then opened with ``O_NOFOLLOW``, and on Linux the opened
descriptor's real path (``/proc/self/fd/N``) is checked against the root once more, so a
component swapped for a link between the check and the open is caught too. Reads are
capped at ``max_bytes``.

**URLs** (:func:`fetch_url`) must be ``http`` or ``https``, carry no credentials, and
name a host whose *every* address is publicly routable. :func:`blocked_reason` refuses
unspecified, loopback, link-local, multicast, reserved, private, site-local and any
other not-globally-routable address, and looks inside IPv4-mapped, NAT64, 6to4 and
Teredo IPv6 addresses for the IPv4 address they carry. The check runs inside the HTTP
client's own resolver, so the addresses that were checked are the ones connected to (no
second DNS answer can slip in between); it also runs once before the request, for a
clear error and for IP literals, which skip the resolver. Redirects are never followed:
a 3xx answer is an error, because its target has not been checked. Proxies from the
environment are ignored (a proxy would connect on our behalf to an unchecked address). A
body over ``max_bytes`` (default :data:`MAX_FETCH_BYTES`, 5 MiB, checked against
``Content-Length`` and while reading) is refused, and the whole fetch has a deadline of
:data:`FETCH_TIMEOUT_S` seconds.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from meshnode import MeshError

__all__ = [
    "CONNECT_TIMEOUT_S",
    "FETCH_TIMEOUT_S",
    "MAX_FETCH_BYTES",
    "UnsafeInput",
    "UnsafePath",
    "UnsafeURL",
    "blocked_reason",
    "check_addresses",
    "fetch_url",
    "read_safe_file",
    "resolve_safe_path",
    "split_url",
]

MAX_FETCH_BYTES = 5 * 1024 * 1024
"""Largest body :func:`fetch_url` accepts by default (bytes), 5 MiB: a CSV of about
50,000 rows like the demo's. A larger answer is refused, not truncated."""

FETCH_TIMEOUT_S = 10.0
"""Deadline for a whole fetch (resolve, connect, headers, body), in seconds."""

CONNECT_TIMEOUT_S = 5.0
"""Deadline for resolving and connecting, in seconds (inside :data:`FETCH_TIMEOUT_S`)."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
BlockedCheck = Callable[[IPAddress], str | None]
"""``check(address) -> reason`` (None: the address may be contacted)."""

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UnsafeInput(MeshError, ValueError):
    """A path or URL in a task's input was refused."""


class UnsafePath(UnsafeInput):
    """The path escapes the allowed directory, or is not a regular file in it."""


class UnsafeURL(UnsafeInput):
    """The URL is malformed, names a blocked address, redirects, or is too large."""


# --------------------------------------------------------------------------- paths


def resolve_safe_path(root: str | os.PathLike[str], name: str) -> Path:
    """The real path of file ``name`` inside ``root``; :class:`UnsafePath` otherwise."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise UnsafePath("a file name must be a non-empty string without NUL bytes")
    relative = Path(name)
    if relative.is_absolute():
        raise UnsafePath(f"{name!r}: name a file inside the data directory, not an absolute path")
    if ".." in relative.parts:
        raise UnsafePath(f"{name!r}: '..' is not allowed")
    base = Path(os.path.realpath(root))
    if not base.is_dir():
        raise UnsafePath("the data directory does not exist")
    real = Path(os.path.realpath(base / relative))
    if real == base or not real.is_relative_to(base):
        raise UnsafePath(f"{name!r} resolves outside the data directory")
    if not real.is_file():
        raise UnsafePath(f"{name!r} is not a regular file in the data directory")
    return real


def read_safe_file(root: str | os.PathLike[str], name: str, max_bytes: int) -> bytes:
    """Read file ``name`` inside ``root`` (see :func:`resolve_safe_path`), at most
    ``max_bytes`` bytes; a larger file is refused."""
    real = resolve_safe_path(root, name)
    base = Path(os.path.realpath(root))
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UnsafePath(f"{name!r} cannot be opened: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePath(f"{name!r} is not a regular file")
        proc_link = Path(f"/proc/self/fd/{fd}")
        if proc_link.parent.is_dir():
            opened = Path(os.readlink(proc_link))
            if not opened.is_relative_to(base):
                raise UnsafePath(f"{name!r} changed to point outside the data directory")
        if info.st_size > max_bytes:
            raise UnsafePath(f"{name!r} is {info.st_size} bytes, over the {max_bytes}-byte limit")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnsafePath(f"{name!r} is over the {max_bytes}-byte limit")
    return data


# --------------------------------------------------------------------------- addresses


def blocked_reason(address: IPAddress) -> str | None:
    """Why ``address`` must not be contacted, or None if it is publicly routable."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded: ipaddress.IPv4Address | None = address.ipv4_mapped
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is None and address.sixtofour is not None:
            embedded = address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is not None:
            inner = blocked_reason(embedded)
            if inner is not None:
                return f"{inner} (inside {address})"
        if address.is_site_local:
            return "site-local"
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("not globally routable", not address.is_global),
    )
    for reason, hit in checks:
        if hit:
            return reason
    return None


def check_addresses(
    host: str, addresses: list[str], is_blocked: BlockedCheck = blocked_reason
) -> None:
    """Refuse ``host`` unless it resolved to at least one address and *every* address it
    resolved to may be contacted (a name with one private answer is refused)."""
    if not addresses:
        raise UnsafeURL(f"{host!r} did not resolve to any address")
    for text in addresses:
        try:
            address = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            raise UnsafeURL(f"{host!r} resolved to an unparsable address {text!r}") from None
        reason = is_blocked(address)
        if reason is not None:
            raise UnsafeURL(f"{host!r} resolves to {address}, a {reason} address")


def split_url(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an acceptable URL; :class:`UnsafeURL` otherwise."""
    if not isinstance(url, str) or len(url) > 2048:
        raise UnsafeURL("a URL must be a string of at most 2048 characters")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL(f"only http and https URLs are fetched, not {parts.scheme or 'none'!r}")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL("URLs with credentials are refused")
    host = parts.hostname
    if not host:
        raise UnsafeURL("the URL has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UnsafeURL("the URL's port is invalid") from None
    return parts.scheme, host, port


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def resolve_checked(
    host: str, port: int, is_blocked: BlockedCheck = blocked_reason
) -> list[tuple[int, str]]:
    """Resolve ``host`` and check every answer; ``[(family, address), ...]``."""
    literal = _literal(host)
    if literal is not None:
        check_addresses(host, [str(literal)], is_blocked)
        family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        return [(family, str(literal))]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeURL(f"{host!r} does not resolve: {exc}") from None
    found: list[tuple[int, str]] = []
    for family, _type, _proto, _name, sockaddr in infos:
        entry = (int(family), str(sockaddr[0]))
        if entry not in found:
            found.append(entry)
    check_addresses(host, [address for _, address in found], is_blocked)
    return found


def _checked_resolver(is_blocked: BlockedCheck) -> Any:
    from aiohttp.abc import AbstractResolver, ResolveResult

    class CheckedResolver(AbstractResolver):
        """Resolves through the system, refuses the host unless every answer is allowed."""

        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            found = await resolve_checked(host, port, is_blocked)
            return [
                ResolveResult(hostname=host, host=address, port=port, family=fam, proto=0, flags=0)
                for fam, address in found
                if family in (socket.AF_UNSPEC, fam)
            ]

        async def close(self) -> None:
            return None

    return CheckedResolver()


async def fetch_url(
    url: str,
    *,
    max_bytes: int = MAX_FETCH_BYTES,
    timeout_s: float = FETCH_TIMEOUT_S,
    is_blocked: BlockedCheck = blocked_reason,
) -> bytes:
    """GET ``url`` under the rules in the module docstring; the body, or :class:`UnsafeURL`.

    ``is_blocked`` replaces the address policy (tests use it to reach a loopback server and
    check the redirect and size rules); everything else applies whatever it says.
    """
    import aiohttp

    _scheme, host, port = split_url(url)
    # Checked here for a clear error (and for IP literals, which skip the resolver), and
    # again by the connector's resolver, which decides the addresses actually connected to.
    await resolve_checked(host, port, is_blocked)
    connector = aiohttp.TCPConnector(
        resolver=_checked_resolver(is_blocked), use_dns_cache=False, force_close=True
    )
    timeout = aiohttp.ClientTimeout(
        total=timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s), sock_read=timeout_s
    )
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as http,
            http.get(url, allow_redirects=False) as resp,
        ):
            if 300 <= resp.status < 400:
                where = resp.headers.get("Location", "?")
                raise UnsafeURL(f"{url} redirects to {where}; redirects are not followed")
            if resp.status != 200:
                raise UnsafeURL(f"{url} answered HTTP {resp.status}")
            declared = resp.content_length
            if declared is not None and declared > max_bytes:
                raise UnsafeURL(f"{url} is {declared} bytes, over the {max_bytes}-byte limit")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > max_bytes:
                    raise UnsafeURL(f"{url} is over the {max_bytes}-byte limit")
            return bytes(body)
    except UnsafeURL:
        raise
    except aiohttp.ClientConnectorError as exc:
        cause = exc.__cause__ or exc.os_error
        if isinstance(cause, UnsafeURL):
            raise cause from None
        raise UnsafeURL(f"{url}: cannot connect ({exc.os_error})") from None
    except TimeoutError:
        raise UnsafeURL(f"{url}: no answer within {timeout_s} s") from None
    except aiohttp.ClientError as exc:
        raise UnsafeURL(f"{url}: {type(exc).__name__}: {exc}") from None
