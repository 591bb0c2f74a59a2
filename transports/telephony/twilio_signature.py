"""``X-Twilio-Signature``: prove a request came from Twilio (its voice webhook, its media stream upgrade).

Twilio signs each request with the account's auth token: HMAC-SHA1 over the full URL it requested
followed by every form parameter (sorted by name, ``name`` + ``value``, repeated names each value in
sorted order), base64. A JSON body is covered by a ``bodySHA256`` query parameter instead; a websocket
upgrade signs its ``wss://`` URL alone. Twilio is inconsistent about the default port, so a URL is
accepted with it (``:443``) and without it, as Twilio's SDK does.

The URL must be the one Twilio was given (the public one), not what a proxy forwards to us: callers
build it from the configured public URL. Sans-I/O and constant-time; no secret is ever logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Literal
from urllib.parse import parse_qs, urlsplit, urlunsplit

__all__ = ["HEADER", "body_hash_matches", "compute", "signed_string", "url_variants", "validate"]

HEADER = "X-Twilio-Signature"
DEFAULT_PORTS = {"https": 443, "wss": 443, "http": 80, "ws": 80}
MAX_SIGNATURE_CHARS = 128
"""A SHA-1 signature is 28 characters, SHA-256 44: longer ones are refused unread."""

Algorithm = Literal["HMAC_SHA1", "HMAC_SHA256"]
Params = Mapping[str, str | Iterable[str]]


def signed_string(url: str, params: Params | None = None) -> str:
    """What Twilio signs: the URL, then each parameter name followed by its value (names sorted)."""
    parts = [url]
    for name in sorted(params or {}):
        value = (params or {})[name]
        values = [value] if isinstance(value, str) else sorted(value)
        parts.extend(name + v for v in values)
    return "".join(parts)


def compute(token: str, url: str, params: Params | None = None, algorithm: Algorithm = "HMAC_SHA1") -> str:
    """The signature Twilio sends for ``url`` and form ``params`` with auth token ``token``."""
    digest = hashlib.sha256 if algorithm == "HMAC_SHA256" else hashlib.sha1
    mac = hmac.new(token.encode(), signed_string(url, params).encode(), digest)
    return base64.b64encode(mac.digest()).decode("ascii")


def url_variants(url: str) -> list[str]:
    """``url`` as given, and with the default port added or removed (Twilio signs either)."""
    parts = urlsplit(url)
    default = DEFAULT_PORTS.get(parts.scheme)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    try:
        port = parts.port
    except ValueError:
        return [url]
    if default is None or (port is not None and port != default):
        return [url]
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    bare = urlunsplit((parts.scheme, prefix + host, parts.path, parts.query, parts.fragment))
    with_port = urlunsplit(
        (parts.scheme, f"{prefix}{host}:{default}", parts.path, parts.query, parts.fragment)
    )
    return [url, *(u for u in (bare, with_port) if u != url)]


def body_hash_matches(url: str, body: str) -> bool:
    """A JSON-body request: the URL's ``bodySHA256`` is the SHA-256 of ``body`` (hex)."""
    sent = parse_qs(urlsplit(url).query).get("bodySHA256", [""])[0]
    actual = hashlib.sha256(body.encode()).hexdigest()
    return bool(sent) and hmac.compare_digest(sent.lower(), actual)


def validate(
    token: str,
    url: str,
    params: Params | str | None,
    signature: str | None,
    algorithm: Algorithm = "HMAC_SHA1",
) -> bool:
    """Whether ``signature`` is Twilio's for this request.

    Args:
        token: the account's auth token (or the webhook rule's key for ``HMAC_SHA256``).
        url: the full public URL Twilio requested (``wss://`` for a media stream upgrade).
        params: the decoded form fields; a ``str`` is a raw JSON body (checked against ``bodySHA256``);
            None for a GET or an upgrade.
        signature: the ``X-Twilio-Signature`` header as sent (None: absent, refused).
    """
    if not token or not signature or len(signature) > MAX_SIGNATURE_CHARS:
        return False
    if isinstance(params, str):
        if not body_hash_matches(url, params):
            return False
        params = None
    given = signature.encode()
    found = False
    for variant in url_variants(url):  # every variant is computed: the time says nothing of which matched
        found |= hmac.compare_digest(compute(token, variant, params, algorithm).encode(), given)
    return found
