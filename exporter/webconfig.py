"""The web config (``--web.config.file``): TLS, basic auth and response headers.

The file has the format of the Prometheus exporter-toolkit, the one node_exporter accepts and
``promtool check web-config`` validates::

    tls_server_config:
      cert_file: server.crt            # relative paths are relative to this file
      key_file: server.key
      client_ca_file: clients-ca.crt
      client_auth_type: RequireAndVerifyClientCert
    basic_auth_users:
      prometheus: $2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG
    http_server_config:
      headers: {X-Frame-Options: deny}

:func:`load_web_config` reads and checks it, certificates included, into a frozen
:class:`WebConfig`; every problem names its key path::

    >>> load_web_config("web.yml")
    Traceback (most recent call last):
    ConfigError: tls_server_config.foo: unknown key

:class:`WebSecurity` is what the server consults on each new connection: the SSL context, the
basic-auth check and the extra headers, re-read when the config file or the files it names change.

Where Python's :mod:`ssl` cannot do what a setting means in Go's crypto/tls (``RequestClientCert``
and ``RequireAnyClientCert`` accept client certificates without verifying them; several
``curve_preferences``), the setting is rejected with a message, never silently weakened.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import secrets
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import bcrypt

from exporter.errors import ConfigError
from exporter.files import MAX_CONFIG_BYTES, read_file, read_yaml
from exporter.files import yaml_type as _yaml_type

log = logging.getLogger(__name__)

#: ``client_auth_type`` values Python's ssl module expresses exactly.
CLIENT_AUTH_TYPES: Final[Mapping[str, ssl.VerifyMode]] = MappingProxyType(
    {
        "NoClientCert": ssl.CERT_NONE,
        "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
        "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
    }
)

# Valid in exporter-toolkit, but they accept a client certificate without verifying it, which
# Python's ssl module cannot do (a requested certificate is always verified).
_UNVERIFIED_CLIENT_AUTH: Final = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")

TLS_VERSIONS: Final[Mapping[str, ssl.TLSVersion]] = MappingProxyType(
    {
        "TLS10": ssl.TLSVersion.TLSv1,
        "TLS11": ssl.TLSVersion.TLSv1_1,
        "TLS12": ssl.TLSVersion.TLSv1_2,
        "TLS13": ssl.TLSVersion.TLSv1_3,
    }
)

#: Go's ``tls.CipherSuites()`` names (what exporter-toolkit accepts) to OpenSSL names. TLS 1.3
#: suites map to None: neither Go nor Python lets them be configured, they are always enabled.
CIPHER_SUITES: Final[Mapping[str, str | None]] = MappingProxyType(
    {
        "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
        "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
        "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
        "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
        "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
        "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_AES_128_GCM_SHA256": None,
        "TLS_AES_256_GCM_SHA384": None,
        "TLS_CHACHA20_POLY1305_SHA256": None,
    }
)

#: exporter-toolkit's curve names to OpenSSL group names.
CURVES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "CurveP256": "prime256v1",
        "CurveP384": "secp384r1",
        "CurveP521": "secp521r1",
        "X25519": "X25519",
    }
)

#: The only response headers exporter-toolkit lets a web config set, with their allowed values
#: (None: any value). Kept this narrow on purpose, as upstream, so that a web config cannot
#: override Content-Type, Authorization and the like.
HEADERS: Final[Mapping[str, tuple[str, ...] | None]] = MappingProxyType(
    {
        "Strict-Transport-Security": None,
        "X-Content-Type-Options": ("nosniff",),
        "X-Frame-Options": ("deny", "sameorigin"),
        "X-XSS-Protection": None,
        "Content-Security-Policy": None,
    }
)

# Keys of newer exporter-toolkit releases that this exporter does not implement.
_NOT_SUPPORTED: Final[Mapping[str, str]] = MappingProxyType(
    {
        "rate_limit": "not supported by this exporter",
        "tls_server_config.cert": "not supported by this exporter; use cert_file",
        "tls_server_config.key": "not supported by this exporter; use key_file",
        "tls_server_config.client_ca": "not supported by this exporter; use client_ca_file",
        "tls_server_config.client_allowed_sans": "not supported by this exporter",
    }
)

_TOP_KEYS: Final = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS_KEYS: Final = (
    "cert_file",
    "key_file",
    "client_ca_file",
    "client_auth_type",
    "min_version",
    "max_version",
    "cipher_suites",
    "curve_preferences",
    "prefer_server_cipher_suites",
)
_HTTP_KEYS: Final = ("http2", "headers")
# What Go's bcrypt.Cost accepts and the bcrypt package can check: $2a$, $2b$, $2x$ or $2y$, a
# two-digit cost, then 22 characters of salt and 31 of hash.
_BCRYPT: Final = re.compile(r"\$2[abxy]\$(\d\d)\$[./A-Za-z0-9]{53}")


@dataclass(frozen=True, slots=True)
class TlsServerConfig:
    """``tls_server_config``; file paths are absolute (resolved against the web config's folder)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    client_auth_type: str = "NoClientCert"
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: tuple[str, ...] = ()
    curve_preferences: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True

    @property
    def files(self) -> tuple[Path, ...]:
        extra = (self.client_ca_file,) if self.client_ca_file is not None else ()
        return (self.cert_file, self.key_file, *extra)


@dataclass(frozen=True, slots=True)
class WebConfig:
    """A validated web config. ``tls`` is None when TLS is off; no users means no basic auth."""

    path: Path
    tls: TlsServerConfig | None = None
    basic_auth_users: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    headers: tuple[tuple[str, str], ...] = ()
    http2: bool = True  # accepted for compatibility; the server speaks HTTP/1.1 only

    @property
    def files(self) -> tuple[Path, ...]:
        """The config file and every file it names: a change to any of them means a re-read."""
        return (self.path, *(self.tls.files if self.tls is not None else ()))


def load_web_config(path: str | os.PathLike[str]) -> WebConfig:
    """Read and check a web config file, certificates and keys included.

    Raises :class:`ConfigError` listing every problem, each naming its key path.
    """
    state, _ = _load(Path(path))
    return state.config


def parse_web_config(data: Any, path: Path) -> WebConfig:
    """Validate already-parsed YAML; relative file names are resolved against ``path``'s folder.

    Does not touch the files it names; :func:`load_web_config` does.
    """
    if data is None:
        return WebConfig(path)
    if not isinstance(data, Mapping):
        raise ConfigError(["(top level): the web config must be a mapping of keys"])
    problems: list[str] = []
    _check_keys(data, "", _TOP_KEYS, problems)
    base = path.parent
    tls = _parse_tls(data.get("tls_server_config"), base, problems)
    headers, http2 = _parse_http(data.get("http_server_config"), problems)
    users = _parse_users(data.get("basic_auth_users"), problems)
    if problems:
        raise ConfigError(problems)
    return WebConfig(path, tls, MappingProxyType(users), headers, http2)


def _check_keys(
    section: Mapping[Any, Any], prefix: str, known: tuple[str, ...], problems: list[str]
) -> None:
    for key in section:
        where = f"{prefix}{key}"
        if where in _NOT_SUPPORTED:
            problems.append(f"{where}: {_NOT_SUPPORTED[where]}")
        elif key not in known:
            problems.append(f"{where}: unknown key")


def _section(value: Any, where: str, problems: list[str]) -> Mapping[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(f"{where}: must be a mapping (got {_yaml_type(value)})")
        return {}
    return value


def _string(value: Any, where: str, problems: list[str]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(f"{where}: must be a string (got {_yaml_type(value)})")
        return None
    if not value:
        problems.append(f"{where}: must not be empty")
        return None
    return value


def _choice(
    value: Any, where: str, choices: Mapping[str, Any], default: str, problems: list[str]
) -> str:
    text = _string(value, where, problems)
    if text is None:
        return default
    if text not in choices:
        problems.append(f"{where}: unknown value {text!r} (use one of {', '.join(choices)})")
        return default
    return text


def _strings(value: Any, where: str, problems: list[str]) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(f"{where}: must be a list (got {_yaml_type(value)})")
        return []
    out = []
    for i, item in enumerate(value):
        text = _string(item, f"{where}[{i}]", problems)
        if text is not None:
            out.append(text)
    return out


def _bool(value: Any, where: str, default: bool, problems: list[str]) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        problems.append(f"{where}: must be true or false (got {_yaml_type(value)})")
        return default
    return value


def _parse_tls(value: Any, base: Path, problems: list[str]) -> TlsServerConfig | None:
    p = "tls_server_config"
    section = _section(value, p, problems)
    _check_keys(section, f"{p}.", _TLS_KEYS, problems)
    cert = _string(section.get("cert_file"), f"{p}.cert_file", problems)
    key = _string(section.get("key_file"), f"{p}.key_file", problems)
    ca = _string(section.get("client_ca_file"), f"{p}.client_ca_file", problems)
    auth = _string(section.get("client_auth_type"), f"{p}.client_auth_type", problems)
    if auth in _UNVERIFIED_CLIENT_AUTH:
        problems.append(
            f"{p}.client_auth_type: {auth} accepts client certificates without verifying them, "
            "which Python's ssl module cannot do; use RequireAndVerifyClientCert (or "
            "VerifyClientCertIfGiven) with client_ca_file"
        )
        auth = None
    elif auth is not None and auth not in CLIENT_AUTH_TYPES:
        problems.append(
            f"{p}.client_auth_type: unknown value {auth!r} "
            f"(use one of {', '.join(CLIENT_AUTH_TYPES)})"
        )
        auth = None
    auth = auth or "NoClientCert"
    min_version = _choice(
        section.get("min_version"), f"{p}.min_version", TLS_VERSIONS, "TLS12", problems
    )
    max_version = _choice(
        section.get("max_version"), f"{p}.max_version", TLS_VERSIONS, "TLS13", problems
    )
    ciphers = _strings(section.get("cipher_suites"), f"{p}.cipher_suites", problems)
    curves = _strings(section.get("curve_preferences"), f"{p}.curve_preferences", problems)
    prefer = _bool(
        section.get("prefer_server_cipher_suites"),
        f"{p}.prefer_server_cipher_suites",
        True,
        problems,
    )
    for i, name in enumerate(ciphers):
        if name not in CIPHER_SUITES:
            problems.append(
                f"{p}.cipher_suites[{i}]: unknown cipher suite {name!r} (use the names of Go's "
                "tls.CipherSuites(), e.g. TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)"
            )
    for i, name in enumerate(curves):
        if name not in CURVES:
            problems.append(
                f"{p}.curve_preferences[{i}]: unknown curve {name!r} "
                f"(use one of {', '.join(CURVES)})"
            )
    if len(curves) > 1:
        problems.append(
            f"{p}.curve_preferences: Python's ssl module can restrict the handshake to one curve "
            "but not rank several; list exactly one"
        )
    if ca is not None and auth == "NoClientCert":
        problems.append(
            f"{p}.client_ca_file: set, but client_auth_type is NoClientCert "
            "(use RequireAndVerifyClientCert or VerifyClientCertIfGiven)"
        )
    if TLS_VERSIONS[min_version] > TLS_VERSIONS[max_version]:
        problems.append(f"{p}.min_version: {min_version} is above max_version {max_version}")
    known = [name for name in ciphers if name in CIPHER_SUITES]
    if known and all(CIPHER_SUITES[n] is None for n in known) and min_version != "TLS13":
        problems.append(
            f"{p}.cipher_suites: lists only TLS 1.3 suites, which are always on and not "
            "configurable; list TLS 1.2 suites too, or set min_version: TLS13"
        )
    if not any(key in _TLS_KEYS for key in section):
        return None
    has_cert = section.get("cert_file") is not None
    has_key = section.get("key_file") is not None
    if not has_cert and not has_key:
        # exporter-toolkit then serves plain HTTP and ignores the other keys; refuse instead of
        # serving plain HTTP to someone who asked for TLS.
        problems.append(f"{p}: cert_file and key_file are required to turn TLS on")
        return None
    if not has_cert:
        problems.append(f"{p}.cert_file: required key is missing (key_file is set)")
    if not has_key:
        problems.append(f"{p}.key_file: required key is missing (cert_file is set)")
    if cert is None or key is None:
        return None
    return TlsServerConfig(
        cert_file=base / cert,
        key_file=base / key,
        client_ca_file=base / ca if ca is not None else None,
        client_auth_type=auth,
        min_version=min_version,
        max_version=max_version,
        cipher_suites=tuple(ciphers),
        curve_preferences=tuple(curves),
        prefer_server_cipher_suites=prefer,
    )


def _parse_http(value: Any, problems: list[str]) -> tuple[tuple[tuple[str, str], ...], bool]:
    p = "http_server_config"
    section = _section(value, p, problems)
    _check_keys(section, f"{p}.", _HTTP_KEYS, problems)
    http2 = _bool(section.get("http2"), f"{p}.http2", True, problems)
    headers: list[tuple[str, str]] = []
    for name, raw in _section(section.get("headers"), f"{p}.headers", problems).items():
        where = f"{p}.headers.{name}"
        if name not in HEADERS:
            problems.append(
                f"{where}: this header cannot be configured (allowed: {', '.join(HEADERS)})"
            )
            continue
        # yaml.v2 reads a number into a string field: X-XSS-Protection: 0 is valid upstream.
        text = str(raw) if isinstance(raw, int) and not isinstance(raw, bool) else raw
        if text is None or text == "":
            continue  # "unset if blank"
        if not isinstance(text, str):
            problems.append(f"{where}: must be a string (got {_yaml_type(raw)})")
            continue
        allowed = HEADERS[name]
        if allowed is not None and text not in allowed:
            problems.append(f"{where}: invalid value {text!r} (use one of {', '.join(allowed)})")
            continue
        if any(c in text for c in "\r\n\0"):
            problems.append(f"{where}: must not contain line breaks")
            continue
        headers.append((name, text))
    return tuple(headers), http2


def _parse_users(value: Any, problems: list[str]) -> dict[str, str]:
    p = "basic_auth_users"
    users: dict[str, str] = {}
    for name, hashed in _section(value, p, problems).items():
        # yaml.v2 reads a number key into a string, as for headers.
        user = str(name) if isinstance(name, int) and not isinstance(name, bool) else name
        if not isinstance(user, str):
            problems.append(f"{p}: user name {name!r} must be a string")
            continue
        where = f"{p}.{user}"
        match = _BCRYPT.fullmatch(hashed) if isinstance(hashed, str) else None
        if match is None:
            # The hash is a secret of sorts: never repeat it.
            problems.append(
                f"{where}: not a bcrypt hash (expected $2y$<cost>$ and 53 characters; "
                "make one with: htpasswd -nBC 10 '' | tr -d ':\\n')"
            )
        elif not 4 <= int(match.group(1)) <= 31:
            problems.append(f"{where}: bcrypt cost {int(match.group(1))} is outside 4..31")
        else:
            users[user] = hashed
    return users


def build_ssl_context(tls: TlsServerConfig) -> ssl.SSLContext:
    """The server-side SSL context for ``tls``; reads the certificate, key and client CA files.

    Raises :class:`ConfigError` naming the key of the file that cannot be used.
    """
    p = "tls_server_config"
    context = _protocol_context(tls)
    cert_pem = _read(tls.cert_file, f"{p}.cert_file")
    key_pem = _read(tls.key_file, f"{p}.key_file")
    if b"-----BEGIN CERTIFICATE-----" not in cert_pem:
        raise ConfigError([f"{p}.cert_file: no PEM certificate in {str(tls.cert_file)!r}"])
    if not re.search(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----", key_pem):
        raise ConfigError([f"{p}.key_file: no PEM private key in {str(tls.key_file)!r}"])

    def no_passphrase() -> str:
        raise ConfigError([f"{p}.key_file: {str(tls.key_file)!r} is encrypted; use a plain key"])

    try:
        context.load_cert_chain(tls.cert_file, tls.key_file, password=no_passphrase)
    except ssl.SSLError as err:
        # OpenSSL does not say which file it choked on: a certificate that loads alone is good.
        _load_certificates(
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cert_pem, tls.cert_file, f"{p}.cert_file"
        )
        reason = "does not match cert_file" if "KEY_VALUES_MISMATCH" in str(err) else str(err)
        raise ConfigError([f"{p}.key_file: cannot use {str(tls.key_file)!r}: {reason}"]) from None
    except (OSError, ValueError) as err:
        raise ConfigError([f"{p}.cert_file: cannot load: {err}"]) from None

    context.verify_mode = CLIENT_AUTH_TYPES[tls.client_auth_type]
    if context.verify_mode != ssl.CERT_NONE:
        if tls.client_ca_file is None:
            # As Go does when no client CA is given: verify against the system's trusted roots.
            context.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        else:
            ca_pem = _read(tls.client_ca_file, f"{p}.client_ca_file")
            _load_certificates(context, ca_pem, tls.client_ca_file, f"{p}.client_ca_file")
    return context


def _protocol_context(tls: TlsServerConfig) -> ssl.SSLContext:
    """A server context with the versions, cipher suites and curve of ``tls``, no certificate.

    What the local OpenSSL refuses (a version or suite it was built without) is a ConfigError.
    """
    p = "tls_server_config"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    key = f"{p}.min_version"
    try:
        with warnings.catch_warnings():
            # TLS 1.0 and 1.1 are deprecated in Python as in Go, but a config may ask for them.
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = TLS_VERSIONS[tls.min_version]
            context.maximum_version = TLS_VERSIONS[tls.max_version]
        if tls.prefer_server_cipher_suites:
            context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        else:
            context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
        key = f"{p}.cipher_suites"
        tls12 = [name for name in (CIPHER_SUITES[c] for c in tls.cipher_suites) if name]
        if tls12:
            context.set_ciphers(":".join(tls12))
        key = f"{p}.curve_preferences"
        if tls.curve_preferences:
            context.set_ecdh_curve(CURVES[tls.curve_preferences[0]])
        context.set_alpn_protocols(["http/1.1"])
    except (ssl.SSLError, ValueError) as err:
        raise ConfigError([f"{key}: not supported by this system's OpenSSL: {err}"]) from None
    return context


def _load_certificates(context: ssl.SSLContext, pem: bytes, path: Path, key: str) -> None:
    """Trust the PEM certificates of ``pem`` (read from ``path``) in ``context``."""
    try:
        context.load_verify_locations(cadata=pem.decode("ascii"))
    except UnicodeDecodeError:
        raise ConfigError([f"{key}: {str(path)!r} is not a PEM file (not ASCII)"]) from None
    except (ssl.SSLError, ValueError) as err:
        raise ConfigError([f"{key}: no usable certificate in {str(path)!r}: {err}"]) from None


def _read(path: Path, key: str) -> bytes:
    return read_file(path, MAX_CONFIG_BYTES, key)


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
                ok = bcrypt.checkpw(password, hashed if hashed is not None else self._decoy)
            except ValueError:  # a password the library refuses (e.g. over 72 bytes)
                ok = False
        if not ok or hashed is None:
            return False
        with self._lock:
            self._good[user] = tag
        return True


@dataclass(frozen=True, slots=True)
class WebState:
    """What applies to a connection: the config, its SSL context (None: plain HTTP) and auth."""

    config: WebConfig
    ssl_context: ssl.SSLContext | None
    auth: BasicAuth | None


_Stamp = tuple[int, int, int, int] | None


def _stamp(path: Path) -> _Stamp:
    try:
        st = path.stat()
    except (OSError, ValueError):  # ValueError: a NUL in the name
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


def _load(path: Path, previous: WebState | None = None) -> tuple[WebState, tuple[_Stamp, ...]]:
    """Load the web config and build what it describes; also return the stamps of its files.

    Each file is stamped before it is read, so a change made while loading shows up later.
    Every failure is a :class:`ConfigError`; what a library raises is translated here.
    """
    stamp = _stamp(path)
    data = read_yaml(path, "web config file")
    config = parse_web_config(data, path.absolute())
    stamps = (stamp, *(_stamp(f) for f in config.files[1:]))
    try:
        context = build_ssl_context(config.tls) if config.tls is not None else None
    except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
        raise ConfigError([f"tls_server_config: cannot be used: {err}"]) from None
    auth: BasicAuth | None = None
    if config.basic_auth_users:
        if previous is not None and previous.config.basic_auth_users == config.basic_auth_users:
            auth = previous.auth  # same users: keep the cache of good passwords
        else:
            auth = BasicAuth(config.basic_auth_users)
    return WebState(config, context, auth), stamps


class WebSecurity:
    """The web config in force, re-read when the file or a file it names changes.

    :meth:`current` is called for every new connection; at most once per ``recheck_seconds`` it
    compares the files' modification times, sizes and inodes with those of the last good load,
    and reloads when they differ. A config that does not load is logged (once per distinct error)
    and the previous one kept, so a half-written certificate never takes the exporter down; the
    load is retried on later checks until it succeeds. Turning TLS on or off needs a restart.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        recheck_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self._recheck = recheck_seconds
        self._clock = clock
        self._state, self._seen = _load(self.path)  # ConfigError: the caller fails at startup
        self._checked = clock()
        self._last_error: str | None = None
        self._lock = threading.Lock()

    @property
    def state(self) -> WebState:
        """The state in force, without checking the files."""
        return self._state

    def current(self) -> WebState:
        """The state to use for a new connection, reloaded first if the files changed."""
        if self._clock() - self._checked < self._recheck:
            return self._state
        if not self._lock.acquire(blocking=False):
            return self._state  # another connection is checking; don't wait for it
        try:
            self._checked = self._clock()
            self._reload_if_changed()
        finally:
            self._lock.release()
        return self._state

    def _reload_if_changed(self) -> None:
        old = self._state
        if tuple(_stamp(f) for f in old.config.files) == self._seen:
            return
        try:
            new, stamps = _load(self.path, old)
            if (new.ssl_context is None) != (old.ssl_context is None):
                raise ConfigError(
                    [f"turning TLS {'on' if old.ssl_context is None else 'off'} needs a restart"]
                )
        except Exception as err:  # any failure keeps the config in force: HTTPS must stay up
            self._failed(err)
            return
        self._state, self._seen, self._last_error = new, stamps, None
        log.info("web config %s reloaded", self.path)

    def _failed(self, err: Exception) -> None:
        """Log a failed reload once per distinct error, on one line."""
        text = str(err) if isinstance(err, ConfigError) else f"{type(err).__name__}: {err}"
        text = " ".join(text.split())
        if text != self._last_error:
            self._last_error = text
            log.error("web config %s: not reloaded, keeping the previous one: %s", self.path, text)
