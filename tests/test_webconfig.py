"""``--web.config.file``: TLS, mutual TLS, basic auth, headers, rotation; checked against promtool.

Certificates come from ``tests.support.pki`` (the ``pki`` fixture): a CA, server certificates for
127.0.0.1 (an IP SAN, as Go's verifier wants), a client certificate from the CA and one from a
foreign CA.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import yaml

from exporter.errors import ConfigError
from exporter.web.auth import BasicAuth
from exporter.web.security import WebSecurity, WebState, load_web_config
from tests.support.api import TOKEN, sim_config
from tests.support.metrics import parse_metrics, value
from tests.support.pki import Pair, Pki, client_context, tls_config, write_web_config
from tests.support.ports import free_port
from tests.support.process import running, wait_for
from tests.support.tools import require_binary

PASSWORD = "s3cret-Scrape"


@pytest.fixture(scope="module")
def password_hash() -> str:
    return bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


# --- helpers ------------------------------------------------------------------------------------


def https_get(port: int, path: str, context: ssl.SSLContext, **kw: Any) -> httpx.Response:
    with httpx.Client(verify=context, timeout=10) as client:
        return client.get(f"https://127.0.0.1:{port}{path}", **kw)


def status(port: int, path: str, context: ssl.SSLContext) -> int | None:
    """The HTTP status, or None when the connection fails (e.g. the TLS handshake)."""
    try:
        return https_get(port, path, context).status_code
    except httpx.TransportError:
        return None


def served_common_name(port: int, pki: Pki) -> str:
    """The CN of the certificate the exporter presents to a new connection."""
    context = client_context(pki)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        cert = conn.getpeercert()
    assert cert is not None
    return str(dict(pair[0] for pair in cert["subject"])["commonName"])


def assert_clean_stop(exporter: Any) -> None:
    assert exporter.stop() == 0
    assert "Traceback" not in exporter.log()


# --- the running exporter -----------------------------------------------------------------------


def test_tls_with_basic_auth_serves_metrics_and_refuses_plain_http(
    simulator, start_exporter, pki, password_hash, tmp_path
):
    web = write_web_config(
        tmp_path,
        {"tls_server_config": tls_config(pki), "basic_auth_users": {"prometheus": password_hash}},
    )
    exporter = start_exporter(sim_config(simulator), "--web.config.file", str(web))
    context = client_context(pki)
    auth = ("prometheus", PASSWORD)

    wait_for(lambda: https_get(exporter.port, "/-/ready", context, auth=auth).status_code == 200)
    response = https_get(exporter.port, "/metrics", context, auth=auth)
    assert response.status_code == 200
    assert value(parse_metrics(response.text), "realtimekit_exporter_build_info") == 1
    # Content negotiation and compression still work behind TLS and auth.
    gz = https_get(
        exporter.port, "/metrics", context, auth=auth, headers={"Accept-Encoding": "gzip"}
    )
    assert gz.headers.get("content-encoding") == "gzip"
    om = https_get(
        exporter.port,
        "/metrics",
        context,
        auth=auth,
        headers={"Accept": "application/openmetrics-text"},
    )
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.rstrip().endswith("# EOF")
    assert https_get(exporter.port, "/-/healthy", context).status_code == 401

    # Plain HTTP to the TLS port gets what Go's servers answer, and no metrics.
    plain = httpx.get(f"http://127.0.0.1:{exporter.port}/metrics", auth=auth, timeout=10)
    assert plain.status_code == 400
    assert "HTTP request to an HTTPS server" in plain.text
    assert "realtimekit" not in plain.text
    # A client that does not trust the CA refuses the exporter's certificate.
    with pytest.raises(httpx.ConnectError):
        https_get(exporter.port, "/metrics", ssl.create_default_context(), auth=auth)
    assert "TLS on, basic auth on for 1 user(s)" in exporter.log()
    assert_clean_stop(exporter)


def test_mutual_tls(simulator, start_exporter, pki, tmp_path):
    required = tls_config(
        pki, client_ca_file=str(pki.ca), client_auth_type="RequireAndVerifyClientCert"
    )
    web = write_web_config(tmp_path, {"tls_server_config": required})
    exporter = start_exporter(sim_config(simulator), "--web.config.file", str(web))

    good_client = client_context(pki, pki.client)
    wait_for(lambda: https_get(exporter.port, "/-/ready", good_client).status_code == 200)
    good = https_get(exporter.port, "/metrics", good_client)
    assert good.status_code == 200 and "realtimekit_exporter_build_info" in good.text
    for context in (client_context(pki), client_context(pki, pki.foreign_client)):
        with pytest.raises(httpx.TransportError):
            https_get(exporter.port, "/metrics", context)
    assert "TLS handshake with 127.0.0.1 failed" in exporter.log()

    # The same file, re-read while running: a certificate becomes optional, but one that is
    # shown must still verify.
    optional = {**required, "client_auth_type": "VerifyClientCertIfGiven"}
    write_web_config(tmp_path, {"tls_server_config": optional})
    wait_for(lambda: status(exporter.port, "/-/healthy", client_context(pki)) == 200, timeout=10)
    assert https_get(exporter.port, "/", client_context(pki, pki.client)).status_code == 200
    with pytest.raises(httpx.TransportError):
        https_get(exporter.port, "/metrics", client_context(pki, pki.foreign_client))
    assert_clean_stop(exporter)


def test_basic_auth_and_headers(simulator, start_exporter, password_hash, tmp_path):
    headers = {"X-Frame-Options": "deny", "Content-Security-Policy": "default-src 'none'"}
    web = write_web_config(
        tmp_path,
        {
            "basic_auth_users": {"prometheus": password_hash},
            "http_server_config": {"headers": headers, "http2": True},
        },
    )
    exporter = start_exporter(sim_config(simulator), "--web.config.file", str(web))

    def get(path: str, auth: tuple[str, str] | None) -> httpx.Response:
        return exporter.get(path, auth=auth)

    wait_for(lambda: get("/-/ready", ("prometheus", PASSWORD)).status_code == 200)
    right = get("/metrics", ("prometheus", PASSWORD))
    assert right.status_code == 200 and "realtimekit_exporter_build_info" in right.text
    # Second request with the same credentials: answered (from the cache of good checks).
    assert get("/metrics", ("prometheus", PASSWORD)).status_code == 200
    for path, auth in [
        ("/metrics", ("prometheus", "wrong")),
        ("/metrics", ("someone", PASSWORD)),
        ("/metrics", None),
        ("/", None),  # every path is protected, as with exporter-toolkit
        ("/-/healthy", None),
    ]:
        denied = get(path, auth)
        assert denied.status_code == 401, (path, auth)
        assert denied.headers["www-authenticate"] == "Basic"
        assert denied.headers["x-frame-options"] == "deny"
    garbled = exporter.get("/metrics", headers={"Authorization": "Basic !!notbase64"})
    assert garbled.status_code == 401

    # The configured headers are on every answer.
    for response in (right, get("/nope", ("prometheus", PASSWORD))):
        for name, expected in headers.items():
            assert response.headers[name] == expected

    # A changed password: the old one (cached as good) fails, the new one works.
    new_hash = bcrypt.hashpw(b"rotated-password", bcrypt.gensalt(rounds=4)).decode()
    write_web_config(tmp_path, {"basic_auth_users": {"prometheus": new_hash}})
    wait_for(lambda: get("/metrics", ("prometheus", PASSWORD)).status_code == 401, timeout=10)
    assert get("/metrics", ("prometheus", "rotated-password")).status_code == 200
    assert (
        get("/metrics", ("prometheus", "rotated-password")).headers.get("x-frame-options") is None
    )
    assert_clean_stop(exporter)


def test_certificate_rotation(simulator, start_exporter, pki, tmp_path):
    live = Pair(tmp_path / "live.crt", tmp_path / "live.key")
    shutil.copy(pki.server.cert, live.cert)
    shutil.copy(pki.server.key, live.key)
    web = write_web_config(
        tmp_path, {"tls_server_config": {"cert_file": "live.crt", "key_file": "live.key"}}
    )
    exporter = start_exporter(sim_config(simulator), "--web.config.file", str(web))
    assert served_common_name(exporter.port, pki) == "rtk-server-1"

    # Replace certificate and key (each atomically, one after the other, as cert-manager does).
    for source, target in ((pki.server2.cert, live.cert), (pki.server2.key, live.key)):
        shutil.copy(source, target.with_suffix(".new"))
        os.replace(target.with_suffix(".new"), target)
    wait_for(lambda: served_common_name(exporter.port, pki) == "rtk-server-2", timeout=10)
    assert https_get(exporter.port, "/metrics", client_context(pki)).status_code == 200

    # A broken key is logged and the last good pair kept.
    live.key.write_text("not a key\n")
    # (The files are checked on new connections, at most once a second.)
    wait_for(
        lambda: (
            served_common_name(exporter.port, pki) == "rtk-server-2"
            and "not reloaded, keeping the previous one" in exporter.log()
        ),
        timeout=10,
    )
    assert "tls_server_config.key_file" in exporter.log()
    assert served_common_name(exporter.port, pki) == "rtk-server-2"
    assert_clean_stop(exporter)


@pytest.mark.process
def test_bad_web_config_is_one_clear_line_at_startup(simulator, pki, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(sim_config(simulator)))
    web = write_web_config(tmp_path, {"tls_server_config": tls_config(pki, foo=1)})
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "--config.file",
            str(config),
            "--web.listen-address",
            "127.0.0.1:0",
            "--web.config.file",
            str(web),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "CLOUDFLARE_API_TOKEN": TOKEN},
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr == (
        f"realtimekit-exporter: error: --web.config.file {web}: "
        "tls_server_config.foo: unknown key\n"
    )
    assert "listening" not in proc.stdout + proc.stderr


def test_prometheus_scrapes_over_tls_with_basic_auth(
    simulator, start_exporter, pki, password_hash, tmp_path
):
    prometheus = require_binary("prometheus")
    web = write_web_config(
        tmp_path,
        {"tls_server_config": tls_config(pki), "basic_auth_users": {"prometheus": password_hash}},
    )
    exporter = start_exporter(sim_config(simulator), "--web.config.file", str(web))
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "2s", "scrape_timeout": "2s"},
                "scrape_configs": [
                    {
                        "job_name": "rtk",
                        "scheme": "https",
                        "tls_config": {"ca_file": str(pki.ca)},
                        "basic_auth": {"username": "prometheus", "password": PASSWORD},
                        "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}],
                    }
                ],
            }
        )
    )
    argv = [
        prometheus,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(expr: str) -> list[Any]:
        try:
            response = httpx.get(f"{api}/query", params={"query": expr}, timeout=2)
            return list(response.json().get("data", {}).get("result", []))
        except (httpx.TransportError, ValueError):  # not up yet, or not answering JSON yet
            return []

    with running(argv, tmp_path / "prometheus.log", cwd=tmp_path) as prom:
        try:
            up = wait_for(
                lambda: [r for r in query('up{job="rtk"}') if r["value"][1] == "1"], 30, 0.5
            )
            assert up[0]["metric"]["instance"] == f"127.0.0.1:{exporter.port}"
            build = wait_for(lambda: query('realtimekit_exporter_build_info{job="rtk"}'), 10, 0.5)
            assert build[0]["value"][1] == "1"
            targets = httpx.get(f"{api}/targets", timeout=5).json()["data"]["activeTargets"]
            assert targets[0]["health"] == "up" and targets[0]["lastError"] == ""
        except AssertionError as err:
            raise AssertionError(f"{err}\n--- prometheus log:\n{prom.log()}") from None
    assert_clean_stop(exporter)


# --- the file format, against promtool ----------------------------------------------------------

Builder = Callable[[Pki, str, Path], Any]


def _hash(prefix: str) -> Builder:
    return lambda pki, hashed, folder: {"basic_auth_users": {"prometheus": prefix + hashed[4:]}}


def _tls(**extra: Any) -> Builder:
    return lambda pki, hashed, folder: {"tls_server_config": tls_config(pki, **extra)}


def _mtls(**extra: Any) -> Builder:
    return _tls(client_ca_file="{ca}", client_auth_type="RequireAndVerifyClientCert", **extra)


def _relative(pki: Pki, hashed: str, folder: Path) -> Any:
    shutil.copy(pki.server.cert, folder / "server.crt")
    shutil.copy(pki.server.key, folder / "server.key")
    return {"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"}}


ACCEPTED: dict[str, Builder] = {
    "empty-file": lambda pki, hashed, folder: "",
    "empty-sections": lambda pki, hashed, folder: {
        "tls_server_config": None,
        "http_server_config": None,
        "basic_auth_users": None,
    },
    "basic-auth-2b": _hash("$2b$"),
    "basic-auth-2y-htpasswd": _hash("$2y$"),
    "basic-auth-2a": _hash("$2a$"),
    "tls-minimal": _tls(),
    "tls-relative-paths": _relative,
    "mtls-full": _mtls(
        min_version="TLS12",
        max_version="TLS13",
        cipher_suites=[
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            "TLS_AES_128_GCM_SHA256",
        ],
        curve_preferences=["CurveP256"],
        prefer_server_cipher_suites=False,
    ),
    "mtls-system-roots": _tls(client_auth_type="RequireAndVerifyClientCert"),
    "verify-if-given": _tls(client_ca_file="{ca}", client_auth_type="VerifyClientCertIfGiven"),
    "no-client-cert": _tls(client_auth_type="NoClientCert"),
    "tls13-only": _tls(min_version="TLS13", cipher_suites=["TLS_AES_256_GCM_SHA384"]),
    "tls10-and-up": _tls(min_version="TLS10", curve_preferences=["X25519"]),
    "headers": lambda pki, hashed, folder: {
        "http_server_config": {
            "headers": {
                "X-Frame-Options": "sameorigin",
                "X-Content-Type-Options": "nosniff",
                "X-XSS-Protection": 0,
                "Strict-Transport-Security": "max-age=31536000",
                "Content-Security-Policy": "default-src 'self'",
            }
        }
    },
    "http2-off": lambda pki, hashed, folder: {"http_server_config": {"http2": False}},
    "everything": lambda pki, hashed, folder: {
        "tls_server_config": tls_config(pki),
        "basic_auth_users": {"prometheus": hashed, "grafana": hashed},
        "http_server_config": {"headers": {"X-Frame-Options": "deny"}},
    },
}

# name → (config, what our message says)
REJECTED: dict[str, tuple[Builder, str]] = {
    "unknown-top-key": (lambda pki, hashed, folder: {"foo": 1}, "foo: unknown key"),
    "unknown-tls-key": (_tls(foo="bar"), "tls_server_config.foo: unknown key"),
    "unknown-http-key": (
        lambda pki, hashed, folder: {"http_server_config": {"http3": True}},
        "http_server_config.http3: unknown key",
    ),
    "newer-upstream-key": (
        lambda pki, hashed, folder: {"rate_limit": {"burst": 1}},
        "rate_limit: not supported by this exporter",
    ),
    "not-a-mapping": (
        lambda pki, hashed, folder: [1, 2],
        "(top level): the web config must be a mapping",
    ),
    "cert-without-key": (
        lambda pki, hashed, folder: {"tls_server_config": {"cert_file": str(pki.server.cert)}},
        "tls_server_config.key_file: required key is missing",
    ),
    "key-without-cert": (
        lambda pki, hashed, folder: {"tls_server_config": {"key_file": str(pki.server.key)}},
        "tls_server_config.cert_file: required key is missing",
    ),
    "client-auth-without-cert": (
        lambda pki, hashed, folder: {
            "tls_server_config": {"client_auth_type": "RequireAndVerifyClientCert"}
        },
        "tls_server_config: cert_file and key_file are required",
    ),
    "invalid-client-auth-type": (
        _tls(client_auth_type="Sometimes"),
        "tls_server_config.client_auth_type: unknown value 'Sometimes'",
    ),
    "client-ca-without-client-auth": (
        _tls(client_ca_file="{ca}"),
        "tls_server_config.client_ca_file: set, but client_auth_type is NoClientCert",
    ),
    "missing-cert-file": (
        _tls(cert_file="/nonexistent/server.crt"),
        "tls_server_config.cert_file: cannot read '/nonexistent/server.crt'",
    ),
    "certificate-as-key": (
        lambda pki, hashed, folder: {
            "tls_server_config": {
                "cert_file": str(pki.server.cert),
                "key_file": str(pki.server.cert),
            }
        },
        "tls_server_config.key_file: no PEM private key",
    ),
    "key-of-another-cert": (
        lambda pki, hashed, folder: {
            "tls_server_config": {
                "cert_file": str(pki.server.cert),
                "key_file": str(pki.server2.key),
            }
        },
        "tls_server_config.key_file: cannot use",
    ),
    "unknown-tls-version": (
        _tls(min_version="TLS14"),
        "tls_server_config.min_version: unknown value 'TLS14'",
    ),
    "unknown-cipher": (
        _tls(cipher_suites=["TLS_FANCY_WITH_ROT13"]),
        "tls_server_config.cipher_suites[0]: unknown cipher suite",
    ),
    "insecure-cipher": (
        _tls(cipher_suites=["TLS_RSA_WITH_3DES_EDE_CBC_SHA"]),
        "tls_server_config.cipher_suites[0]: unknown cipher suite",
    ),
    "unknown-curve": (
        _tls(curve_preferences=["CurveP224"]),
        "tls_server_config.curve_preferences[0]: unknown curve 'CurveP224'",
    ),
    "wrong-type": (
        _tls(prefer_server_cipher_suites="yes"),
        "tls_server_config.prefer_server_cipher_suites: must be true or false (got a string)",
    ),
    "header-not-allowed": (
        lambda pki, hashed, folder: {
            "http_server_config": {"headers": {"Content-Type": "text/html"}}
        },
        "http_server_config.headers.Content-Type: this header cannot be configured",
    ),
    "header-bad-value": (
        lambda pki, hashed, folder: {
            "http_server_config": {"headers": {"X-Frame-Options": "allow"}}
        },
        "http_server_config.headers.X-Frame-Options: invalid value 'allow'",
    ),
    "bcrypt-not-a-hash": (
        lambda pki, hashed, folder: {"basic_auth_users": {"prometheus": "s3cret"}},
        "basic_auth_users.prometheus: not a bcrypt hash",
    ),
    "bcrypt-truncated": (
        lambda pki, hashed, folder: {"basic_auth_users": {"prometheus": hashed[:40]}},
        "basic_auth_users.prometheus: not a bcrypt hash",
    ),
    "bcrypt-cost-too-low": (
        lambda pki, hashed, folder: {
            "basic_auth_users": {"prometheus": hashed[:4] + "03" + hashed[6:]}
        },
        "basic_auth_users.prometheus: bcrypt cost 3 is outside 4..31",
    ),
    "bcrypt-empty": (
        lambda pki, hashed, folder: {"basic_auth_users": {"prometheus": None}},
        "basic_auth_users.prometheus: not a bcrypt hash",
    ),
}

# promtool accepts these, we refuse them on purpose: Python's ssl module cannot do what they ask
# for, or they silently leave TLS off.
STRICTER: dict[str, tuple[Builder, str]] = {
    "request-client-cert": (
        _tls(client_auth_type="RequestClientCert"),
        "RequestClientCert accepts client certificates without verifying them",
    ),
    "require-any-client-cert": (
        _tls(client_ca_file="{ca}", client_auth_type="RequireAnyClientCert"),
        "RequireAnyClientCert accepts client certificates without verifying them",
    ),
    "several-curves": (
        _tls(curve_preferences=["X25519", "CurveP256"]),
        "tls_server_config.curve_preferences: Python's ssl module can restrict the handshake to one curve",
    ),
    "min-above-max": (
        _tls(min_version="TLS13", max_version="TLS12"),
        "tls_server_config.min_version: TLS13 is above max_version TLS12",
    ),
    "tls-keys-without-cert": (
        lambda pki, hashed, folder: {"tls_server_config": {"min_version": "TLS13"}},
        "tls_server_config: cert_file and key_file are required to turn TLS on",
    ),
}


def _fixture(builder: Builder, pki: Pki, hashed: str, folder: Path) -> Path:
    data = builder(pki, hashed, folder)
    if isinstance(data, dict):
        data = yaml.safe_dump(data).replace("'{ca}'", str(pki.ca)).replace("{ca}", str(pki.ca))
    return write_web_config(folder, data)


def promtool_accepts(path: Path) -> tuple[bool, str]:
    proc = subprocess.run(
        [require_binary("promtool"), "check", "web-config", str(path)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    return proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", sorted(ACCEPTED))
@pytest.mark.process
def test_configs_promtool_accepts_are_accepted(name, pki, password_hash, tmp_path):
    path = _fixture(ACCEPTED[name], pki, password_hash, tmp_path)
    ok, output = promtool_accepts(path)
    assert ok, f"promtool rejects the {name} fixture: {output}"
    config = load_web_config(path)
    assert config.path == path.absolute()


@pytest.mark.parametrize("name", sorted(REJECTED))
@pytest.mark.process
def test_configs_promtool_rejects_are_rejected(name, pki, password_hash, tmp_path):
    builder, message = REJECTED[name]
    path = _fixture(builder, pki, password_hash, tmp_path)
    ok, output = promtool_accepts(path)
    assert not ok, f"promtool accepts the {name} fixture: {output}"
    with pytest.raises(ConfigError) as err:
        load_web_config(path)
    assert message in str(err.value)


@pytest.mark.parametrize("name", sorted(STRICTER))
@pytest.mark.process
def test_deliberately_stricter_than_promtool(name, pki, password_hash, tmp_path):
    builder, message = STRICTER[name]
    path = _fixture(builder, pki, password_hash, tmp_path)
    ok, output = promtool_accepts(path)
    assert ok, f"promtool now rejects the {name} fixture too: {output}"
    with pytest.raises(ConfigError) as err:
        load_web_config(path)
    assert message in str(err.value)


def test_loaded_config_is_what_the_file_says(pki, password_hash, tmp_path):
    path = _fixture(ACCEPTED["mtls-full"], pki, password_hash, tmp_path)
    config = load_web_config(path)
    assert config.tls is not None
    assert config.tls.cert_file == pki.server.cert
    assert config.tls.client_ca_file == pki.ca
    assert config.tls.client_auth_type == "RequireAndVerifyClientCert"
    assert config.tls.curve_preferences == ("CurveP256",)
    assert config.tls.prefer_server_cipher_suites is False
    relative = load_web_config(_fixture(_relative, pki, password_hash, tmp_path))
    assert relative.tls is not None and relative.tls.cert_file == tmp_path / "server.crt"
    headers = load_web_config(_fixture(ACCEPTED["headers"], pki, password_hash, tmp_path))
    assert ("X-XSS-Protection", "0") in headers.headers
    assert (
        load_web_config(_fixture(ACCEPTED["empty-file"], pki, password_hash, tmp_path)).tls is None
    )


def test_every_problem_is_listed(pki, tmp_path):
    path = write_web_config(
        tmp_path,
        {
            "tls_server_config": tls_config(pki, min_version="TLS9", bogus=1),
            "basic_auth_users": {"a": "x"},
            "extra": True,
        },
    )
    with pytest.raises(ConfigError) as err:
        load_web_config(path)
    assert sorted(err.value.problems) == sorted(
        [
            "extra: unknown key",
            "tls_server_config.bogus: unknown key",
            "tls_server_config.min_version: unknown value 'TLS9' (use one of TLS10, TLS11, TLS12, TLS13)",
            "basic_auth_users.a: not a bcrypt hash (expected $2y$<cost>$ and 53 characters; "
            "make one with: htpasswd -nBC 10 '' | tr -d ':\\n')",
        ]
    )


def test_basic_auth_checks(password_hash):
    auth = BasicAuth({"prometheus": password_hash})
    assert auth.check(b"prometheus", PASSWORD.encode())
    assert auth.check(b"prometheus", PASSWORD.encode())  # now from the cache
    assert not auth.check(b"prometheus", b"wrong")
    assert not auth.check(b"nobody", PASSWORD.encode())
    assert not auth.check(b"prometheus", b"x" * 100)  # longer than bcrypt takes
    assert not auth.check_header(None)
    assert not auth.check_header("Bearer abc")
    assert not auth.check_header("Basic cHJvbWV0aGV1cw==")  # no colon


# --- a new web config that does not load keeps the old one (issue 13, item 10) ------------------

BROKEN_PEM = b"-----BEGIN CERTIFICATE-----\nTUlJQm9ndXM=\n-----END CERTIFICATE-----\n"


def _replace(target: Path, content: bytes | Path) -> None:
    """Atomically make ``target`` hold ``content``, or be a symlink to it (a Path)."""
    new = target.with_name(target.name + ".new")
    new.unlink(missing_ok=True)
    if isinstance(content, Path):
        new.symlink_to(content)
    else:
        new.write_bytes(content)
    os.replace(new, target)


def _live_tls(tmp_path: Path, pki: Pki) -> tuple[Pair, Path, bytes]:
    """Copies of the server pair, and a web config naming them (with its bytes, to restore)."""
    live = Pair(tmp_path / "live.crt", tmp_path / "live.key")
    _replace(live.cert, pki.server.cert.read_bytes())
    shutil.copy(pki.server.key, live.key)
    web = write_web_config(
        tmp_path, {"tls_server_config": {"cert_file": "live.crt", "key_file": "live.key"}}
    )
    return live, web, web.read_bytes()


def _breakages(live: Pair, web: Path, good: bytes, tmp_path: Path) -> list[tuple[str, Any, str]]:
    """(name, what to do to the files, a fragment of the one log line it must cause)."""
    fifo = tmp_path / "a.fifo"
    os.mkfifo(fifo)
    return [
        ("bad byte", lambda: _replace(web, good + b"# \xff\n"), "not UTF-8 text"),
        ("deep", lambda: _replace(web, ("[" * 20_000).encode()), "nested deeper than 100"),
        ("fifo", lambda: _replace(web, fifo), "it is a FIFO, not a regular file"),
        ("dev-zero", lambda: _replace(web, Path("/dev/zero")), "it is a character device"),
        (
            "broken cert",
            lambda: _replace(live.cert, BROKEN_PEM),
            "tls_server_config.cert_file: no usable certificate",
        ),
        (
            "non-ASCII cert",
            lambda: _replace(live.cert, BROKEN_PEM + b"\xff"),
            "tls_server_config.cert_file: ",
        ),
        ("cert is /dev/zero", lambda: _replace(live.cert, Path("/dev/zero")), "character device"),
    ]


def _current_in_a_thread(security: WebSecurity) -> WebState:
    """``security.current()`` in a daemon thread: a read that blocked fails the test, not hangs."""
    result: list[WebState] = []
    thread = threading.Thread(target=lambda: result.append(security.current()), daemon=True)
    thread.start()
    thread.join(10)
    assert result, "WebSecurity.current() blocked"
    return result[0]


def test_any_failure_to_reload_keeps_the_old_config_and_logs_once(pki, tmp_path, caplog):
    live, web, good = _live_tls(tmp_path, pki)
    security = WebSecurity(web, recheck_seconds=0)
    for name, breakage, fragment in _breakages(live, web, good, tmp_path):
        _replace(web, good)  # a good config again (re-read: a new state, the same certificate)
        _replace(live.cert, pki.server.cert.read_bytes())
        in_force = _current_in_a_thread(security)
        caplog.clear()
        breakage()
        with caplog.at_level(logging.INFO, logger="exporter.webconfig"):
            for _ in range(5):  # every call re-checks (recheck_seconds=0), and fails again
                assert _current_in_a_thread(security) is in_force, name
        logged = [r.getMessage() for r in caplog.records]
        assert len(logged) == 1, (name, logged)
        assert "not reloaded, keeping the previous one" in logged[0], name
        assert fragment in logged[0], (name, logged[0])
        assert "\n" not in logged[0] and "Traceback" not in caplog.text
    # Once the files are good again, the new ones are taken.
    _replace(live.cert, pki.server2.cert.read_bytes())
    _replace(live.key, pki.server2.key.read_bytes())
    _replace(web, good)
    assert _current_in_a_thread(security) is not in_force
    assert "reloaded" in caplog.records[-1].getMessage()


def test_running_exporter_keeps_serving_https_through_bad_web_configs(
    simulator, start_exporter, pki, tmp_path
):
    live, web, good = _live_tls(tmp_path, pki)
    exporter = start_exporter(sim_config(simulator), "--web.config.file", str(web))
    assert served_common_name(exporter.port, pki) == "rtk-server-1"
    for name, breakage, fragment in _breakages(live, web, good, tmp_path)[:5]:
        _replace(web, good)
        _replace(live.cert, pki.server.cert.read_bytes())
        breakage()
        # (The files are checked on new connections, at most once a second.)
        wait_for(
            lambda f=fragment: (
                served_common_name(exporter.port, pki) == "rtk-server-1" and f in exporter.log()
            ),
            timeout=10,
        )
        # Connections for over two recheck periods (1 s): each check fails again, silently.
        deadline = time.monotonic() + 2.5
        for _ in range(1000):
            assert served_common_name(exporter.port, pki) == "rtk-server-1", name
            if time.monotonic() > deadline:
                break
        assert https_get(exporter.port, "/metrics", client_context(pki)).status_code == 200
        assert exporter.log().count(fragment) == 1, (name, exporter.log())
    _replace(live.cert, pki.server2.cert.read_bytes())
    _replace(live.key, pki.server2.key.read_bytes())
    _replace(web, good)
    wait_for(lambda: served_common_name(exporter.port, pki) == "rtk-server-2", timeout=10)
    assert_clean_stop(exporter)
