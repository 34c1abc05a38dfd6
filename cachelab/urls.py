"""Redis URLs: check them before connecting, and never show their passwords.

Kept apart from :mod:`cachelab.connection` so that :mod:`cachelab.cluster` can use the same
checks without importing the module that imports it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from redis.asyncio.connection import Connection, parse_url

from .errors import InvalidURLError

__all__ = ["SCHEMES", "check_userinfo", "redact_url", "scrub", "validate_url"]

SCHEMES = ("redis", "rediss", "unix")
"""The schemes of one server; ``redis+cluster://`` and the special ``embedded://`` and
``fakeredis://`` are handled by :func:`cachelab.connect` before a URL gets here."""

_USERINFO = re.compile(r"((?:^|//)[^/@:]*):([^/@]*)@")
_QUERY_PASSWORD = re.compile(r"(password=)[^&]*", re.I)


_DELIMITERS = "/?#[]"


def _cut_userinfo(url: str) -> tuple[str, str] | None:
    """``(user, password)`` when the user info holds one of ``/?#[]`` as it is (not as
    ``%2F``...): urlsplit would then end it early, or read an IPv6 address into it, and take
    the rest of the password for a host, a port, a path or a query. The user info runs to the
    last ``@``, as a person (and urlsplit, for an ``@`` alone) reads it."""
    _scheme, sep, rest = url.partition("://")
    userinfo = rest.rpartition("@")[0] if sep else ""
    if not any(c in userinfo for c in _DELIMITERS):
        return None
    user, colon, password = userinfo.partition(":")
    if not colon or any(c in user for c in _DELIMITERS):
        return "", userinfo
    return user, password


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (also for URLs that do not parse)."""
    cut = _cut_userinfo(url)
    if cut is not None:
        scheme, _, rest = url.partition("://")
        return _QUERY_PASSWORD.sub(r"\1***", f"{scheme}://{cut[0]}:***@{rest.rpartition('@')[2]}")
    if "://" not in url:  # e.g. "user:pw@host:6379": urlsplit would not see the password
        return _QUERY_PASSWORD.sub(r"\1***", _USERINFO.sub(r"\1:***@", url))
    try:
        parts = urlsplit(url)
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if parts.password is None and not any(k.lower() == "password" for k, _ in pairs):
            return url  # nothing to hide: leave the URL exactly as it was given
        netloc = parts.netloc
        if parts.password is not None:
            host = netloc.rsplit("@", 1)[1]
            netloc = f"{parts.username or ''}:***@{host}"
        query = urlencode(
            [(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*"
        )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return _QUERY_PASSWORD.sub(r"\1***", _USERINFO.sub(r"\1:***@", url))


def scrub(text: str, url: str) -> str:
    """Remove the password of ``url`` from ``text`` (error messages from the driver)."""
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        passwords = {parts.password, unquote(parts.password or "")}
        passwords |= {v for k, v in parse_qsl(parts.query) if k.lower() == "password"}
        cut = _cut_userinfo(url)
        if cut is not None:  # and the pieces urlsplit made of it (a port, a path, a query)
            passwords |= {cut[1], unquote(cut[1]), *re.split(r"[@/?#\[\]]", cut[1])}
        for password in sorted(filter(None, passwords), key=len, reverse=True):
            text = text.replace(password, "***")
    return text


@functools.cache
def _options_of(connection_class: type) -> frozenset[str]:
    """The names a URL's query may set: the connection's keyword arguments and the pool's.
    redis-py hands any other name to the connection, which raises TypeError when it connects."""
    names = {"connection_class", "max_connections", "timeout"}
    for klass in connection_class.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            parameters = inspect.signature(init).parameters.values()
            names |= {
                p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
            }
    return frozenset(names - {"self"})


def check_userinfo(url: str) -> None:
    """Refuse a user name or password with URL delimiters in it as they are (see
    :func:`_cut_userinfo`): whatever would be made of it could show the password as a host."""
    if _cut_userinfo(url) is not None:
        raise InvalidURLError(
            f"{redact_url(url)} is not a valid Redis URL: its user name or password holds one of "
            "/ ? # [ ] as it is; write them as %2F %3F %23 %5B %5D"
        )


def validate_url(url: str) -> None:
    """Raise :class:`~cachelab.InvalidURLError` (password hidden) unless ``url`` names one
    Redis server that redis-py can reach as written: a known scheme, a host, a numeric port and
    a database number (redis-py would quietly use database 0 for ``redis://host/abc``)."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidURLError(
            f"a Redis URL must be a non-empty string, got {url!r}; "
            "use e.g. redis://127.0.0.1:6379/0"
        )
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise InvalidURLError(
            f"{redact_url(url)} is not a Redis URL (scheme {scheme or 'missing'!r}); use "
            "redis://[[user]:password@]host[:port][/db], rediss:// for TLS, unix:///path/to.sock, "
            "redis+cluster://host:port,host:port for a Redis Cluster, "
            "or embedded:// / fakeredis:// to have cachelab provide one"
        )
    expected = "expected redis://[[user]:password@]host[:port][/db]"
    check_userinfo(url)
    try:
        options = parse_url(url)
        parts = urlsplit(url)
        if scheme != "unix":
            _ = parts.port  # raises ValueError on a non-numeric or out-of-range port
            if not parts.hostname:
                raise ValueError("no host name")
    except ValueError as exc:
        raise InvalidURLError(
            f"{redact_url(url)} is not a valid Redis URL: {scrub(str(exc), url)}; {expected}"
        ) from None
    # a plain `type`: mypy takes a type[C] for unhashable (python/mypy#11470)
    connection_class: type = options.get("connection_class", Connection)
    unknown = sorted(set(options) - _options_of(connection_class))
    if unknown:
        raise InvalidURLError(
            scrub(
                f"{redact_url(url)} is not a valid Redis URL: unknown option "
                f"{', '.join(map(repr, unknown))} in its query (after '?'); known ones include "
                "socket_timeout, client_name and ssl_cert_reqs (and a '?' in a password is "
                "written %3F)",
                url,
            )
        )
    db = unquote(parts.path).strip("/") if scheme != "unix" else ""
    if (db and not (db.isascii() and db.isdigit())) or options.get("db", 0) < 0:
        shown = scrub(repr(db or options.get("db")), url)
        raise InvalidURLError(
            f"{redact_url(url)} names database {shown}, which is not a database number; "
            "write the number after the port (redis://host:6379/0) or leave it out for 0"
        )
