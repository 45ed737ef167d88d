"""Basic auth of the web config: bcrypt hashes, with successful checks remembered.

>>> BasicAuth({"prometheus": hashed}).check_header("Basic cHJvbWV0aGV1czpzM2NyZXQ=")
True
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
from collections.abc import Mapping


def parse_basic_authorization(header: str | None) -> tuple[bytes, bytes] | None:
    """``Basic dXNlcjpwYXNz`` to ``(b"user", b"pass")``; None when absent or malformed."""
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    return (user, password) if sep else None


class BasicAuth:
    """Checks user name and password against bcrypt hashes, remembering successful checks.

    bcrypt is slow on purpose (a cost of 10 takes tens of milliseconds), and Prometheus sends the
    same credentials on every scrape, so a success is remembered: per user, an HMAC of the password
    under a random per-process key, compared in constant time. The cache holds at most one entry
    per configured user; failures are never cached, so a wrong password always pays full price.
    """

    def __init__(self, users: Mapping[str, str]) -> None:
        if not users:
            raise ValueError("BasicAuth needs at least one user")
        import bcrypt  # here: a process without basic auth does not load it

        self._checkpw = bcrypt.checkpw
        self._users = {name.encode(): hashed.encode() for name, hashed in users.items()}
        # Unknown users are checked against a real hash too, so timing does not tell them apart.
        self._decoy = next(iter(self._users.values()))
        self._key = secrets.token_bytes(32)
        self._good: dict[bytes, bytes] = {}
        self._lock = threading.Lock()
        # One bcrypt at a time, as exporter-toolkit does: a flood of wrong passwords then costs
        # one core, not all of them.
        self._bcrypt_lock = threading.Lock()

    def check_header(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header value carries valid credentials."""
        credentials = parse_basic_authorization(header)
        return credentials is not None and self.check(*credentials)

    def check(self, user: bytes, password: bytes) -> bool:
        hashed = self._users.get(user)
        tag = hmac.new(self._key, password, hashlib.sha256).digest()
        if hashed is not None:
            with self._lock:
                known = self._good.get(user)
            if known is not None and hmac.compare_digest(known, tag):
                return True
        with self._bcrypt_lock:
            try:
                ok = self._checkpw(password, hashed if hashed is not None else self._decoy)
            except ValueError:  # a password the library refuses (e.g. over 72 bytes)
                ok = False
        if not ok or hashed is None:
            return False
        with self._lock:
            self._good[user] = tag
        return True
