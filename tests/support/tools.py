"""Tools the tests run: a missing one skips its test visibly, or fails it when CI requires it
(``RTK_REQUIRE_PROMETHEUS=1`` for Prometheus' tools, ``RTK_REQUIRE_TOOLS=1`` for the others)."""

from __future__ import annotations

import importlib
import os
import shutil
from typing import Any, NoReturn

import pytest


def missing(what: str, env: str = "RTK_REQUIRE_TOOLS") -> NoReturn:
    """Skip, saying ``what`` is missing; fail instead when ``env`` is 1."""
    if os.environ.get(env) == "1":
        pytest.fail(f"{what}, and {env}=1 requires it")
    pytest.skip(f"{what} (set {env}=1 to make this a failure)")


def require_tool(*names: str, hint: str, env: str = "RTK_REQUIRE_TOOLS") -> str:
    """Path of the first of ``names`` on PATH (``hint``: how to install it)."""
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    missing(f"{names[0]} is not installed ({hint})", env)


def require_binary(name: str) -> str:
    """Path of ``promtool`` or ``prometheus`` (Debian's ``prometheus`` package)."""
    return require_tool(name, hint="apt-get install prometheus", env="RTK_REQUIRE_PROMETHEUS")


def require_module(name: str, hint: str) -> Any:
    """A Python module the tests use when it is installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"Python module {name} is not installed ({hint})")
