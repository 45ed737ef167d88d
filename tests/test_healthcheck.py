"""The container HEALTHCHECK (``python -m exporter.healthcheck``) against real exporter processes.

Each check runs as a subprocess, as Docker runs it, against ``python -m exporter --demo`` on a free
127.0.0.1 port; PID 1's command line is replaced by a file written here (``--cmdline-file``).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
import yaml

from exporter import healthcheck
from exporter.healthcheck import Unhealthy, exporter_flags, probe_url, uses_tls
from tests.support.pki import server_certs
from tests.support.ports import free_port
from tests.support.process import ROOT, demo, source_env

EXPORTER = [sys.executable, "-m", "exporter"]
#: This module's fixtures that start processes (conftest marks the tests using them).
PROCESS_FIXTURES = frozenset({"demo_port"})
CONFIG_IN_IMAGE = ["--config.file", "/etc/realtimekit-exporter/config.yaml"]


def write_cmdline(tmp_path: Path, argv: list[str]) -> Path:
    path = tmp_path / f"cmdline-{len(list(tmp_path.glob('cmdline-*')))}"
    path.write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")  # as /proc/PID/cmdline
    return path


def run_check(*args: str | Path) -> tuple[int, list[str]]:
    """Exit status and output lines (stdout and stderr) of one healthcheck run."""
    env = source_env()
    env["HTTP_PROXY"] = env["http_proxy"] = "http://127.0.0.1:9"  # must not be used
    result = subprocess.run(
        [sys.executable, "-m", "exporter.healthcheck", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=ROOT,
        check=False,
    )
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    return result.returncode, output.splitlines()


@contextlib.contextmanager
def demo_exporter(tmp_path: Path, *flags: str) -> Iterator[int]:
    """``python -m exporter --demo`` on a free loopback port, until it listens; yields the port."""
    port = free_port()
    with demo(tmp_path / f"exporter-{port}.log", *flags, port=port):
        yield port


@pytest.fixture(scope="module")
def demo_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with demo_exporter(tmp_path_factory.mktemp("demo")) as port:
        yield port


# -- units ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "tls", "url"),
    [
        (":9877", False, "http://127.0.0.1:9877/-/healthy"),
        ("0.0.0.0:9100", False, "http://127.0.0.1:9100/-/healthy"),
        ("[::]:9100", True, "https://[::1]:9100/-/healthy"),
        ("[::1]:9100", False, "http://[::1]:9100/-/healthy"),
        ("10.1.2.3:80", False, "http://10.1.2.3:80/-/healthy"),
        ("localhost:9443", True, "https://localhost:9443/-/healthy"),
    ],
)
def test_probe_url(address: str, tls: bool, url: str) -> None:
    assert probe_url(address, tls) == url


@pytest.mark.parametrize("address", ["9877", "host:", "host:http", ":0", ":70000", ""])
def test_probe_url_rejects_bad_addresses(address: str) -> None:
    with pytest.raises(Unhealthy, match="is not HOST:PORT"):
        probe_url(address, False)


def test_probe_url_agrees_with_the_server() -> None:
    from exporter.web.listen import parse_listen_address

    for address in (":9877", "0.0.0.0:1", "[::]:9100", "127.0.0.1:65535", "[::1]:2"):
        host, port = parse_listen_address(address)
        url = probe_url(address, False)
        assert url.endswith(f":{port}/-/healthy"), address
        assert host in ("0.0.0.0", "::") or f"//{host}:" in url or f"//[{host}]:" in url


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], (":9877", "")),
        ([*CONFIG_IN_IMAGE, "--log.level", "debug"], (":9877", "")),
        (["--web.listen-address", ":9100"], (":9100", "")),
        (["--web.listen-address=[::]:9100", "--web.config.file=w.yml"], ("[::]:9100", "w.yml")),
        (["--web.listen-address=:1", "--web.listen-address=:2"], (":1", "")),  # the first
        (["/usr/local/bin/realtimekit-exporter", "--demo"], (":9877", "")),
        (
            ["--", "realtimekit-exporter", *CONFIG_IN_IMAGE, "--web.listen-address", ":5"],
            (":5", ""),
        ),
    ],
)
def test_exporter_flags(argv: list[str], expected: tuple[str, str]) -> None:
    assert exporter_flags(argv) == expected


def test_flags_are_the_exporters() -> None:
    from exporter.app import DEFAULT_PORT
    from exporter.cli import build_parser

    options = {a.dest: a for a in build_parser()._actions}
    assert options["listen_address"].option_strings == ["--web.listen-address"]
    assert f":{DEFAULT_PORT}" == healthcheck.DEFAULT_LISTEN_ADDRESS  # the exporter's default
    assert f"(default: :{DEFAULT_PORT}," in options["listen_address"].help
    assert options["web_config_file"].option_strings == ["--web.config.file"]


def test_uses_tls(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    assert uses_tls("") is False
    for data, tls in [
        (None, False),
        ({"basic_auth_users": {"a": "b"}}, False),
        ({"tls_server_config": None}, False),
        ({"tls_server_config": {"cert_file": "c.pem", "key_file": "k.pem"}}, True),
    ]:
        web.write_text(yaml.safe_dump(data))
        assert uses_tls(str(web)) is tls, data
    with pytest.raises(Unhealthy, match=r"cannot read --web.config.file .*missing\.yml"):
        uses_tls(str(tmp_path / "missing.yml"))


# -- against a running exporter -------------------------------------------------------------------


def test_healthy_exporter_found_from_its_command_line(demo_port: int, tmp_path: Path) -> None:
    for argv in (
        ["python3", "-m", "exporter", "--demo", "--web.listen-address", f"127.0.0.1:{demo_port}"],
        # The image's entrypoint under `docker run --init IMAGE --web.listen-address=:PORT`.
        [
            "/sbin/docker-init",
            "--",
            "realtimekit-exporter",
            *CONFIG_IN_IMAGE,
            f"--web.listen-address=:{demo_port}",
        ],
    ):
        code, lines = run_check("--cmdline-file", write_cmdline(tmp_path, argv))
        assert (code, lines) == (0, [f"healthy: 200 from http://127.0.0.1:{demo_port}/-/healthy"])


def test_own_flags_override_the_command_line(demo_port: int, tmp_path: Path) -> None:
    elsewhere = write_cmdline(tmp_path, ["x", "--web.listen-address", f":{free_port()}"])
    code, lines = run_check("--cmdline-file", elsewhere, f"--web.listen-address=:{demo_port}")
    assert code == 0, lines


@pytest.mark.parametrize(
    ("exporter_argv", "message"),
    [
        (["--web.listen-address", "127.0.0.1:{port}"], r"connection refused$"),
        (["--web.listen-address", "nonsense"], r"'nonsense' is not HOST:PORT$"),
        (["--web.listen-address"], r"expected one argument$"),
        (["--web.config.file", "/nonexistent/web.yml"], r"cannot read --web.config.file"),
    ],
)
@pytest.mark.process
def test_failure_is_one_quiet_line(tmp_path: Path, exporter_argv: list[str], message: str) -> None:
    argv = ["realtimekit-exporter", *(a.format(port=free_port()) for a in exporter_argv)]
    code, lines = run_check("--cmdline-file", write_cmdline(tmp_path, argv))
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("unhealthy: "), lines
    assert re.search(message, lines[0]), lines


@pytest.mark.process
def test_unreadable_command_line_means_the_default_address(tmp_path: Path) -> None:
    # Whether or not something answers on 9877 on this machine, that is where it looks.
    _, lines = run_check("--cmdline-file", tmp_path / "absent")
    assert lines and "127.0.0.1:9877/-/healthy" in lines[0]
    assert len(lines) == 1


@pytest.mark.process
def test_basic_auth_means_alive(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"basic_auth_users": {"prometheus": hashed}}))
    with demo_exporter(tmp_path, "--web.config.file", str(web)) as port:
        argv = ["e", f"--web.listen-address=127.0.0.1:{port}", f"--web.config.file={web}"]
        code, lines = run_check("--cmdline-file", write_cmdline(tmp_path, argv))
    assert (code, lines) == (
        0,
        [f"alive: 401 from http://127.0.0.1:{port}/-/healthy (basic auth is on)"],
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    ca, server = server_certs(tmp_path_factory.mktemp("pki"))
    return {"ca": ca, "cert": server.cert, "key": server.key}


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
@pytest.mark.process
def test_tls_is_probed_over_https(tmp_path: Path, certs: dict[str, Path], mutual: bool) -> None:
    tls = {"cert_file": str(certs["cert"]), "key_file": str(certs["key"])}
    if mutual:
        tls.update(client_ca_file=str(certs["ca"]), client_auth_type="RequireAndVerifyClientCert")
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"tls_server_config": tls}))
    with demo_exporter(tmp_path, "--web.config.file", str(web)) as port:
        url = f"https://127.0.0.1:{port}/-/healthy"
        code, lines = run_check(f"--web.listen-address=127.0.0.1:{port}", "--web.config.file", web)
        plain = run_check(f"--web.listen-address=127.0.0.1:{port}")
    expected = (
        f"alive: {url} requires a client certificate" if mutual else f"healthy: 200 from {url}"
    )
    assert (code, lines) == (0, [expected])
    assert plain[0] == 1 and len(plain[1]) == 1, "plain http to a TLS port must fail"
