"""The socket-activated systemd variant: ``realtimekit-exporter.socket`` and its service."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
PLAIN = SYSTEMD / "realtimekit-exporter.service"
SOCKET = SYSTEMD / "realtimekit-exporter.socket"
SERVICE = SYSTEMD / "realtimekit-exporter-socket.service"


def directives(path: Path) -> list[tuple[str, str]]:
    out, pending = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith(("#", ";", "["))):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        key, _, value = (pending + line).partition("=")
        pending = ""
        out.append((key.strip(), " ".join(value.split())))
    return out


def test_the_socket_starts_the_socket_service_which_takes_its_sockets() -> None:
    from exporter.cli import build_parser

    socket_unit = dict(directives(SOCKET))
    assert socket_unit["Service"] == SERVICE.name
    assert socket_unit["ListenStream"] == "9877"
    service = dict(directives(SERVICE))
    assert service["Requires"] == SOCKET.name
    args = build_parser().parse_args(shlex.split(service["ExecStart"])[1:])
    assert args.systemd_socket and args.listen_address is None


def test_the_socket_service_is_the_plain_one_but_for_where_it_listens() -> None:
    """Hardening, token and restart policy are the plain unit's, line for line."""
    ignored = {"Requires", "After", "Wants", "ExecStart"}
    plain = [d for d in directives(PLAIN) if d[0] not in ignored]
    socket_service = [d for d in directives(SERVICE) if d[0] not in ignored]
    assert socket_service == plain


@pytest.mark.process
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    for unit in (SOCKET, SERVICE):
        text = unit.read_text(encoding="utf-8")
        # verify insists that ExecStart's program exists: point it at one that does.
        text = text.replace("/opt/realtimekit-exporter/bin/realtimekit-exporter", "/bin/true")
        (tmp_path / unit.name).write_text(text)
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(tmp_path / SOCKET.name), str(tmp_path / SERVICE.name)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not result.stderr.strip(), result.stderr
