"""The console's login: a signed cookie instead of the key, and a brake on guessing the key.

The operator types ``ADMIN_API_KEY`` once into the login form; it is compared in constant time and
never stored, logged or put in a URL. What the browser keeps is a cookie
``<expiry>.<nonce>.<signature>``: HMAC-SHA256 over the expiry and a random nonce, under a key
derived from ``ADMIN_API_KEY``. Any process that knows the key checks any cookie (``--workers``
share the server API's port), and changing the key ends every console session at once. The
cookie is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page sends it)
and ``Path=/console``, and lasts :data:`SESSION_SECONDS`.

Logging out clears the cookie and revokes its value in the process that answered, until it would
have expired; under ``--workers`` another worker still accepts a copy of it until then.

Failed logins are limited per client address with a token bucket (:mod:`yektaws.ratelimit`):
:data:`LOGIN_FAILURE_BURST` wrong keys at once, then one per :data:`LOGIN_FAILURE_REFILL`
seconds; a correct key forgets the address's failures. The count is per process: under
``--workers N`` an address may try N times as many keys.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from yektaws.ratelimit import TokenBucket

__all__ = [
    "COOKIE_NAME",
    "LOGIN_FAILURE_BURST",
    "LOGIN_FAILURE_REFILL",
    "SESSION_SECONDS",
    "CookieSigner",
    "LoginLimiter",
    "keys_match",
]

#: The console cookie's name.
COOKIE_NAME = "yektaws_console"
#: Seconds a console login lasts.
SESSION_SECONDS = 8 * 3600
#: Wrong keys one address may try at once.
LOGIN_FAILURE_BURST = 5
#: Seconds after which an address may try one more wrong key.
LOGIN_FAILURE_REFILL = 30.0
#: Addresses whose failures are remembered at once; beyond it the oldest is forgotten.
MAX_TRACKED_ADDRESSES = 10_000
#: Revoked cookies remembered at once (each only until it would have expired anyway).
MAX_REVOKED = 10_000

# What the cookie key is derived for: a different purpose string gives an unrelated key.
_PURPOSE = b"yektaws console session cookie v1"


def keys_match(presented: str, expected: str) -> bool:
    """Whether ``presented`` is the key, compared in constant time."""
    return hmac.compare_digest(presented.encode(), expected.encode())


class CookieSigner:
    """Issues and checks console cookies under a key derived from the server API key."""

    def __init__(self, api_key: str) -> None:
        self._key = hmac.new(api_key.encode(), _PURPOSE, hashlib.sha256).digest()
        #: value -> its expiry, for logged-out cookies that have not expired yet.
        self._revoked: dict[str, int] = {}

    def _sign(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()

    def issue(self) -> str:
        payload = f"{int(time.time()) + SESSION_SECONDS}.{secrets.token_hex(8)}"
        return f"{payload}.{self._sign(payload)}"

    def _expiry(self, value: str) -> int | None:
        """The cookie's expiry if it is ours and unexpired, else None."""
        payload, _, signature = value.rpartition(".")
        if not payload or not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return None
        expiry = int(payload.partition(".")[0])
        return expiry if expiry > time.time() else None

    def valid(self, value: str | None) -> bool:
        return value is not None and value not in self._revoked and self._expiry(value) is not None

    def revoke(self, value: str | None) -> None:
        if not value or (expiry := self._expiry(value)) is None:
            return
        now = time.time()
        self._revoked = {v: e for v, e in self._revoked.items() if e > now}
        if len(self._revoked) >= MAX_REVOKED:
            self._revoked.pop(next(iter(self._revoked)))
        self._revoked[value] = expiry


class LoginLimiter:
    """Failed login attempts per address (see the module docstring)."""

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}

    def attempt(self, address: str) -> bool:
        """Whether ``address`` may try a key now; every try counts until one succeeds."""
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_ADDRESSES:
                self._buckets.pop(next(iter(self._buckets)))
            bucket = self._buckets[address] = TokenBucket(
                1.0 / LOGIN_FAILURE_REFILL, LOGIN_FAILURE_BURST
            )
        return bucket.try_take()

    def succeeded(self, address: str) -> None:
        self._buckets.pop(address, None)
