"""Fixtures and hooks; the helpers they use are in ``tests/support``.

Every test that starts an OS process (the exporter, the simulator's CLI, redis-server,
Prometheus and its tools, Chromium, pip…) carries the ``process`` marker: a test that uses a
fixture named in ``PROCESS_FIXTURES`` (here, or the same set in its own module) gets it from the
hook below, the others from their module's ``pytestmark`` or their own mark.
``pytest -m "not process"`` runs the rest, the unit layer, in seconds. A test without the marker
that starts a process fails, saying so."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.api import TOKEN
from tests.support.pki import Pki, make_pki
from tests.support.process import Exporters
from tests.support.redis import RedisServer, redis_server_path

#: Fixtures that start processes: a test using one (directly or through another fixture) is
#: marked ``process``. A test module adds its own in a ``PROCESS_FIXTURES`` set of its own.
PROCESS_FIXTURES = frozenset({"start_exporter", "make_redis"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        own: frozenset[str] = getattr(
            getattr(item, "module", None), "PROCESS_FIXTURES", frozenset()
        )
        if (PROCESS_FIXTURES | own) & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.process)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    """A test without the ``process`` marker may not start one (its fixtures neither): the
    unit layer stays free of them."""
    if item.get_closest_marker("process") is not None:
        return (yield)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(
            f"{item.nodeid} starts a process: mark it @pytest.mark.process, or name its fixture "
            "in PROCESS_FIXTURES (tests/conftest.py)"
        )

    saved = subprocess.Popen._execute_child, os.fork  # type: ignore[attr-defined]
    subprocess.Popen._execute_child = refuse  # type: ignore[attr-defined]
    os.fork = refuse
    try:
        return (yield)
    finally:
        subprocess.Popen._execute_child, os.fork = saved  # type: ignore[attr-defined]


@pytest.fixture
def simulator() -> Iterator[Any]:
    """A simulator in this process (a thread serving loopback HTTP), 4 meetings, manual mode."""
    from exporter.simulator import Simulator

    sim = Simulator(token=TOKEN, meetings=4, auto=False, seed=1)
    sim.start("127.0.0.1", 0)
    yield sim
    sim.stop()


@pytest.fixture
def start_exporter(tmp_path: Path) -> Iterator[Exporters]:
    """Start real exporters (``start_exporter(config, *flags, env=…)``), each in a directory of
    its own; all stop at teardown, and no log line of any may hold the token (nor what a test
    adds to ``start_exporter.forbidden``)."""
    exporters = Exporters(tmp_path)
    yield exporters
    exporters.stop_all()


@pytest.fixture
def make_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start real redis-servers (extra flags: ``--requirepass …``), each in its own directory;
    each can be stopped and started again on the same port."""
    servers: list[RedisServer] = []

    def make(*extra: str) -> RedisServer:
        directory = tmp_path / f"redis{len(servers)}"
        directory.mkdir()
        server = RedisServer.local(redis_server_path(), directory, *extra)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Certificates of a test CA (``tests.support.pki.make_pki``)."""
    return make_pki(tmp_path_factory.mktemp("pki"))
