"""The simulator's settings as one frozen options object, and the package's shape."""

from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from exporter.simulator import FaultConfig, SimOptions, Simulator, sign, well_known_body

TOKEN = "options-token"
PACKAGE = Path(__file__).resolve().parent.parent / "exporter" / "simulator"


def test_options_are_frozen_and_normalised() -> None:
    options = SimOptions(token=TOKEN, meetings=["a", "b"], paging_drop=["end_offset"])
    assert options.meetings == ("a", "b") and options.paging_drop == ("end_offset",)
    assert isinstance(options.faults, FaultConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.page_base = 0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"token": ""}, "token must not be empty"),
        ({"speed": 0}, "speed must be > 0"),
        ({"page_base": 2}, "page_base must be 0 or 1"),
        ({"per_page_cap": 0}, "per_page_cap must be >= 1"),
        ({"paging": "some"}, "paging must be one of"),
        ({"paging": "partial", "paging_drop": ()}, "needs at least one field"),
        ({"unknown_meeting": "x"}, "unknown_meeting must be one of"),
        ({"livestream_shape": "tuple"}, "livestream_shape must be one of"),
        ({"no_recording": "gone"}, "no_recording must be one of"),
        ({"churn_per_page": -1}, "churn_per_page must be >= 0"),
        ({"webhook_url": "ftp://x"}, "webhook_url must be an http(s) URL"),
        ({"webhook_url": "http://x", "webhook_timeout": 0}, "webhook_timeout must be > 0"),
        ({"webhook_key": "not a key"}, "webhook_key must be an RSA private key"),
    ],
)
def test_a_bad_option_is_named(kwargs: dict[str, object], message: str) -> None:
    kwargs = {"token": TOKEN} | kwargs
    with pytest.raises(ValueError, match=re.escape(message)):
        SimOptions(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=re.escape(message)
    ):  # the keyword constructor says the same
        Simulator(**kwargs)


def test_simulator_takes_options_or_keywords_and_keywords_win() -> None:
    base = SimOptions(token=TOKEN, meetings=3, auto=False, seed=4, page_base=0)
    by_options = Simulator(base)
    by_keywords = Simulator(token=TOKEN, meetings=3, auto=False, seed=4, page_base=0)
    assert by_options.meeting_ids == by_keywords.meeting_ids  # same seed, same world
    changed = Simulator(base, per_page_cap=2)
    assert changed.options.per_page_cap == 2 and changed.options.page_base == 0
    assert base.per_page_cap == 100  # the given options are not changed
    with Simulator(base, per_page_cap=2) as sim:
        for mid in sim.meeting_ids:
            sim.set_participants(mid, 1)
        url = f"/accounts/{sim.account_id}/realtime/kit/{sim.app_id}/sessions"
        with httpx.Client(base_url=sim.base_url, timeout=5) as c:
            body = c.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert len(body["data"]["sessions"]) == 2
    assert body["paging"] == {"total_count": 3, "start_offset": 1, "end_offset": 2}


def test_signing_helpers_live_in_the_simulator() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    import exporter.webhooks
    from exporter.webhooks import parse_well_known, verify

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert verify(parse_well_known(well_known_body(key.public_key())), b"b", sign(key, b"b"))
    assert not hasattr(exporter.webhooks, "sign")  # production code only verifies
    assert not hasattr(exporter.webhooks, "well_known_body")


def _sizes(path: Path) -> list[str]:
    """Every module over 500 lines, class over 250, function over 70 in ``path``."""
    text = path.read_text(encoding="utf-8")
    found = [f"{path.name}: {n} lines"] if (n := len(text.splitlines())) > 500 else []
    for node in ast.walk(ast.parse(text)):
        limit = {ast.ClassDef: 250, ast.FunctionDef: 70}.get(type(node))
        if limit is not None:
            size = node.end_lineno - node.lineno + 1  # type: ignore[attr-defined]
            if size > limit:
                found.append(f"{path.name}: {node.name} is {size} lines")  # type: ignore[attr-defined]
    return found


def test_every_module_class_and_function_is_within_its_size() -> None:
    modules = sorted(PACKAGE.glob("*.py"))
    assert len(modules) > 5
    assert [problem for path in modules for problem in _sizes(path)] == []


def test_the_package_has_no_import_circle() -> None:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[path.stem] = {
            node.module.rsplit(".", 1)[1]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("exporter.simulator.")
        }
    assert graph["options"] == set() and "__init__" not in set().union(*graph.values())
    done: set[str] = set()
    for _ in range(len(graph)):  # peel off modules whose imports are all done
        ready = {m for m, deps in graph.items() if m not in done and deps <= done}
        if not ready:
            break
        done |= ready
    assert done == set(graph), f"import circle among {sorted(set(graph) - done)}"


@pytest.mark.process
def test_module_and_console_entry_points_start() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "exporter.simulator", "--meetings", "-1", "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and out.stderr.startswith("simulator: meetings must be >= 0")
