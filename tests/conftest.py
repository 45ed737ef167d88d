"""Shared test helpers."""

from __future__ import annotations

import os
import shutil

import pytest

TOKEN = "test-token-Sn3lZJTBX6kkg7OdcBUAxOO963GEIyGQ"


def require_binary(name: str) -> str:
    """Path of a Debian tool; skip visibly when absent, fail when RTK_REQUIRE_PROMETHEUS=1."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not installed (apt-get install prometheus)"
        if os.environ.get("RTK_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(message + " and RTK_REQUIRE_PROMETHEUS=1")
        pytest.skip(message)
    return path
