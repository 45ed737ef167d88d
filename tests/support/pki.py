"""Certificates made with ``cryptography`` (a CA, server certificates for 127.0.0.1 with an IP
SAN, as Go's verifier wants, client certificates, and a foreign CA's), and web config files."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Issued = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: Pair
    server2: Pair  # same CA and SAN, another name: for rotation
    client: Pair
    foreign_client: Pair  # signed by a CA the exporter does not trust


def issue(name: str, issuer: Issued | None, *, ca: bool = False, server: bool = False) -> Issued:
    """A certificate for common name ``name`` and its key, signed by ``issuer`` (None: by its own
    key); a CA, a server certificate for 127.0.0.1 and localhost, or a client certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()),
            critical=False,
        )
    if ca:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        builder = builder.add_extension(usage, critical=True)
    else:
        purpose = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
    if server:
        san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(signing_key, hashes.SHA256()), key


def write_pair(folder: Path, name: str, cert: x509.Certificate, key: Any) -> Pair:
    """``folder/name.crt`` and ``folder/name.key`` (PEM, the key unencrypted PKCS#8)."""
    pair = Pair(folder / f"{name}.crt", folder / f"{name}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pair


def make_ca(folder: Path, name: str = "rtk test CA") -> Path:
    """A CA certificate (and its key) in ``folder``: the certificate's path."""
    return write_pair(folder, "ca", *issue(name, None, ca=True)).cert


def server_certs(folder: Path, name: str = "exporter") -> tuple[Path, Pair]:
    """A test CA and a server certificate for 127.0.0.1 it signed: (CA file, server pair)."""
    ca = issue("rtk test CA", None, ca=True)
    return write_pair(folder, "ca", *ca).cert, write_pair(
        folder, "server", *issue(name, ca, server=True)
    )


def make_pki(folder: Path) -> Pki:
    """A CA, two server certificates and a client certificate from it, and a client
    certificate from a foreign CA."""
    ca = issue("rtk test CA", None, ca=True)
    foreign_ca = issue("foreign CA", None, ca=True)
    return Pki(
        ca=write_pair(folder, "ca", *ca).cert,
        server=write_pair(folder, "server", *issue("rtk-server-1", ca, server=True)),
        server2=write_pair(folder, "server2", *issue("rtk-server-2", ca, server=True)),
        client=write_pair(folder, "client", *issue("prometheus", ca)),
        foreign_client=write_pair(folder, "foreign", *issue("intruder", foreign_ca)),
    )


def write_web_config(tmp_path: Path, data: Any, name: str = "web.yml") -> Path:
    """A ``--web.config.file`` (YAML of ``data``, or ``data`` as it is when a string)."""
    path = tmp_path / name
    # Write then rename, as a config manager would: a reader never sees half a file.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    os.replace(tmp, path)
    return path


def tls_config(pki: Pki, **extra: Any) -> dict[str, Any]:
    """A web config's ``tls_server_config`` with the PKI's server certificate."""
    return {"cert_file": str(pki.server.cert), "key_file": str(pki.server.key), **extra}


def client_context(pki: Pki, client: Pair | None = None) -> ssl.SSLContext:
    """A client's TLS context trusting the PKI's CA (presenting ``client`` when given)."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    return context
