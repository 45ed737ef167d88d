"""The server's SSL context from a web config's ``tls_server_config``.

    >>> context = build_ssl_context(load_web_config("web.yml").tls)

Where Python's :mod:`ssl` cannot do what a setting means in Go's crypto/tls, the setting was
refused when the config was parsed (:mod:`exporter.web.config`); what the local OpenSSL refuses
(a version or suite it was built without) is a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import logging
import platform
import re
import ssl
import warnings
from pathlib import Path

from exporter.errors import ConfigError
from exporter.files import MAX_CONFIG_BYTES, read_file
from exporter.web.config import (
    CIPHER_SUITES,
    CLIENT_AUTH_TYPES,
    CURVES,
    TLS_VERSIONS,
    TlsServerConfig,
)

log = logging.getLogger("exporter.webconfig")  # the name log lines have always had


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
            _set_curve(context, tls.curve_preferences[0])
        context.set_alpn_protocols(["http/1.1"])
    except (ssl.SSLError, ValueError) as err:
        raise ConfigError([f"{key}: not supported by this system's OpenSSL: {err}"]) from None
    return context


def _set_curve(context: ssl.SSLContext, curve: str) -> None:
    """Restrict the key exchange to ``curve``.

    CPython up to 3.11.4 (Debian bookworm's 3.11.2 among them) looks the name up as an EC curve
    in ``set_ecdh_curve``, and X25519 is no EC curve there: it refuses it whatever OpenSSL can
    do. OpenSSL's default groups put X25519 first, so a client that offers it gets it anyway;
    the handshake is then not *restricted* to X25519 (clients without it may use another of
    OpenSSL's default groups), which is logged once per load rather than refusing the config.
    """
    try:
        context.set_ecdh_curve(CURVES[curve])
    except ssl.SSLError as err:
        if curve != "X25519" or "UNKNOWN_GROUP" not in str(err):
            raise
        log.info(
            "tls_server_config.curve_preferences: this Python (%s) cannot restrict the key "
            "exchange to X25519; OpenSSL's default groups apply, which prefer X25519",
            platform.python_version(),
        )


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
