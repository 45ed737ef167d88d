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

:func:`parse_web_config` checks the parsed YAML into a frozen :class:`WebConfig` (and
:func:`exporter.web.security.load_web_config` reads the file and its certificates too); every
problem names its key path::

    >>> load_web_config("web.yml")
    Traceback (most recent call last):
    ConfigError: tls_server_config.foo: unknown key

The SSL context is built by :mod:`exporter.web.tls`, basic auth checked by
:mod:`exporter.web.auth`, and :class:`exporter.web.security.WebSecurity` is what the server
consults on each new connection, re-read when the files change.

Where Python's :mod:`ssl` cannot do what a setting means in Go's crypto/tls (``RequestClientCert``
and ``RequireAnyClientCert`` accept client certificates without verifying them; several
``curve_preferences``), the setting is rejected with a message, never silently weakened.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from exporter.errors import ConfigError
from exporter.files import yaml_type as _yaml_type

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
    auth = _client_auth(section.get("client_auth_type"), problems)
    min_version = _choice(
        section.get("min_version"), f"{p}.min_version", TLS_VERSIONS, "TLS12", problems
    )
    max_version = _choice(
        section.get("max_version"), f"{p}.max_version", TLS_VERSIONS, "TLS13", problems
    )
    ciphers, curves = _suites_and_curves(section, problems)
    prefer = _bool(
        section.get("prefer_server_cipher_suites"),
        f"{p}.prefer_server_cipher_suites",
        True,
        problems,
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
    if not any(key in _TLS_KEYS for key in section) or not _has_pair(section, problems):
        return None
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


def _client_auth(value: Any, problems: list[str]) -> str:
    where = "tls_server_config.client_auth_type"
    auth = _string(value, where, problems)
    if auth in _UNVERIFIED_CLIENT_AUTH:
        problems.append(
            f"{where}: {auth} accepts client certificates without verifying them, "
            "which Python's ssl module cannot do; use RequireAndVerifyClientCert (or "
            "VerifyClientCertIfGiven) with client_ca_file"
        )
        return "NoClientCert"
    if auth is not None and auth not in CLIENT_AUTH_TYPES:
        problems.append(
            f"{where}: unknown value {auth!r} (use one of {', '.join(CLIENT_AUTH_TYPES)})"
        )
        return "NoClientCert"
    return auth or "NoClientCert"


def _suites_and_curves(
    section: Mapping[Any, Any], problems: list[str]
) -> tuple[list[str], list[str]]:
    p = "tls_server_config"
    ciphers = _strings(section.get("cipher_suites"), f"{p}.cipher_suites", problems)
    curves = _strings(section.get("curve_preferences"), f"{p}.curve_preferences", problems)
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
    return ciphers, curves


def _has_pair(section: Mapping[Any, Any], problems: list[str]) -> bool:
    """Whether both ``cert_file`` and ``key_file`` are given (else say which is missing)."""
    p = "tls_server_config"
    has_cert = section.get("cert_file") is not None
    has_key = section.get("key_file") is not None
    if not has_cert and not has_key:
        # exporter-toolkit then serves plain HTTP and ignores the other keys; refuse instead of
        # serving plain HTTP to someone who asked for TLS.
        problems.append(f"{p}: cert_file and key_file are required to turn TLS on")
        return False
    if not has_cert:
        problems.append(f"{p}.cert_file: required key is missing (key_file is set)")
    if not has_key:
        problems.append(f"{p}.key_file: required key is missing (cert_file is set)")
    return has_cert and has_key


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
