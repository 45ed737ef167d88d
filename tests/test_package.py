"""The package as users get it: ``python -m build`` makes a wheel and an sdist that ``twine check``
passes, and the wheel installed into a fresh virtual environment made by Debian's own
``/usr/bin/python3`` (not the interpreter running the tests) runs: ``--version``,
``--config.check`` on ``config.example.yaml`` and ``--demo`` until ``/-/ready`` answers.

Everything is built from a copy of the source tree, so the checkout gets no ``build/`` or
``*.egg-info``. Debian's ``python3`` without its venv module (package ``python3-venv``) skips
the install test with that reason, or fails it when ``RTK_REQUIRE_TOOLS=1`` (CI installs it).
"""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from tests.support.ports import free_port
from tests.support.process import NO_PROXY, Process, wait_ok
from tests.support.tools import missing

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parent.parent
DEBIAN_PYTHON = Path("/usr/bin/python3")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
#: Not part of a build: version control, environments, caches and earlier build output.
NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    ".venv*",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.py[co]",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
)


def package_version() -> str:
    text = (ROOT / "exporter" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    assert match, "exporter/__init__.py has no __version__"
    return match.group(1)


def run(cmd: list[str | Path], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    args = [str(c) for c in cmd]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **kw)


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without what would leak the test's own interpreter in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


@dataclass(frozen=True)
class Dist:
    wheel: Path
    sdist: Path

    def wheel_metadata(self) -> Message:
        with zipfile.ZipFile(self.wheel) as whl:
            name = f"realtimekit_exporter-{package_version()}.dist-info/METADATA"
            return email.parser.Parser().parsestr(whl.read(name).decode())


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    try:
        import build  # noqa: F401
    except ImportError:
        pytest.fail("the dev extra installs 'build': pip install -e '.[dev]'")
    tmp = tmp_path_factory.mktemp("package")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCES)
    out = tmp / "dist"
    result = run([sys.executable, "-m", "build", "--outdir", out, src], 600, env=clean_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = out.glob("realtimekit_exporter-*-py3-none-any.whl")
    (sdist,) = out.glob("realtimekit_exporter-*.tar.gz")
    return Dist(wheel, sdist)


def test_build_and_twine_check(dist: Dist) -> None:
    version = package_version()
    assert dist.wheel.name == f"realtimekit_exporter-{version}-py3-none-any.whl"
    assert dist.sdist.name == f"realtimekit_exporter-{version}.tar.gz"
    twine = [sys.executable, "-m", "twine", "check", "--strict", dist.wheel, dist.sdist]
    result = run(twine, 120, env=clean_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_wheel_metadata(dist: Dist) -> None:
    meta = dist.wheel_metadata()
    assert meta["Metadata-Version"] >= "2.4", "PEP 639 license fields need metadata 2.4"
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert "License" not in meta, "the deprecated free-text License field is gone"
    assert not [c for c in meta.get_all("Classifier", []) if c.startswith("License ::")], (
        "PEP 639: no license classifiers beside a license expression"
    )
    assert meta["Author"] and meta["Requires-Python"] == ">=3.11"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL", []))
    assert urls.get("Source", "").startswith("https://"), urls
    assert "Topic :: System :: Monitoring" in meta.get_all("Classifier", [])
    assert meta["Description-Content-Type"] == "text/markdown"
    requires = meta.get_all("Requires-Dist", [])
    plain = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0] for r in requires if ";" not in r}
    assert not plain & {"redis", "limits"}, "redis and limits belong to the ha extra"
    for name in ("redis", "limits"):
        assert any(r.startswith(name) and r.endswith('extra == "ha"') for r in requires), name
    assert {"ha", "dev"} <= set(meta.get_all("Provides-Extra", []))
    with zipfile.ZipFile(dist.wheel) as whl:
        license_text = whl.read(
            f"realtimekit_exporter-{package_version()}.dist-info/licenses/LICENSE"
        )
        assert license_text == (ROOT / "LICENSE").read_bytes()
        names = whl.namelist()
    assert {
        "exporter/cli.py",
        "exporter/simulator/__init__.py",
        "exporter/limiter/local.py",
    } <= set(names)
    assert not [n for n in names if n.startswith("tests/")], "the tests are not installed"


def test_license_is_the_apache_2_text() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]


def test_sdist_carries_what_a_rebuild_and_the_tests_need(dist: Dist) -> None:
    with tarfile.open(dist.sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in (
        "LICENSE",
        "README.md",
        "CHANGELOG.md",
        "pyproject.toml",
        "config.example.yaml",
        "exporter/cli.py",
        "deploy/prometheus/alerts.yml",
        "tests/conftest.py",
        "tests/support/process.py",
    ):
        assert needed in names, f"the sdist lacks {needed}"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_dev_extra_pulls_in_ha() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert "realtimekit-exporter[ha]" in extras["dev"]
    assert {re.split(r"[<>=]", r)[0] for r in extras["ha"]} == {"redis", "limits"}
    requires = PYPROJECT["build-system"]["requires"]
    (setuptools,) = [r for r in requires if r.startswith("setuptools")]
    floor = re.fullmatch(r"setuptools>=(\d+)(?:\.\d+)*", setuptools)
    assert floor and int(floor.group(1)) >= 77, "PEP 639 metadata needs setuptools >= 77"


# -- the wheel in a virtual environment of Debian's own Python ------------------------------------


def debian_python() -> Path:
    """``/usr/bin/python3`` when it can make a venv with pip; else skip (fail in CI)."""
    why = None
    if not DEBIAN_PYTHON.exists():
        why = f"{DEBIAN_PYTHON} does not exist (not a Debian-like system)"
    else:
        probe = run([DEBIAN_PYTHON, "-c", "import ensurepip, venv"], 30)
        if probe.returncode != 0:
            why = f"{DEBIAN_PYTHON} has no venv module (apt-get install python3-venv)"
    if why is not None:
        missing(why)
    return DEBIAN_PYTHON


@pytest.fixture(scope="module")
def installed(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin directory of a fresh venv of Debian's python3 with the wheel (no extras)."""
    python = debian_python()
    venv = tmp_path_factory.mktemp("debian-venv") / "venv"
    made = run([python, "-m", "venv", venv], 180, env=clean_env())
    assert made.returncode == 0, made.stdout + made.stderr
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet", dist.wheel]
    result = run(pip, 600, env=clean_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return venv / "bin"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty working directory: nothing but the installed package can be imported there."""
    path = tmp_path / "home"
    path.mkdir()
    return path


def installed_env(bindir: Path, home: Path, **extra: str) -> dict[str, str]:
    return {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(home), **extra}


def test_installed_wheel_runs_on_debians_python(installed: Path, home: Path) -> None:
    env = installed_env(installed, home)
    version = run([installed / "python", "--version"], 30, env=env, cwd=home)
    debian = run([DEBIAN_PYTHON, "--version"], 30)
    assert version.stdout == debian.stdout, "the venv runs Debian's interpreter"
    where = run([installed / "python", "-c", "import exporter; print(exporter.__file__)"], 30,
                env=env, cwd=home)  # fmt: skip
    assert where.returncode == 0 and "/site-packages/exporter/" in where.stdout, where

    shown = run([installed / "realtimekit-exporter", "--version"], 30, env=env, cwd=home)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == f"realtimekit-exporter {package_version()}"

    # Without the ha extra, the HA libraries are not installed.
    ha = run([installed / "python", "-c", "import redis"], 30, env=env, cwd=home)
    assert ha.returncode != 0 and "No module named 'redis'" in ha.stderr

    example = ROOT / "config.example.yaml"
    cmd = [installed / "realtimekit-exporter", "--config.check", "--config.file", example]
    token = "package-test-token-7c1e"
    ok = run(cmd, 60, env={**env, "CLOUDFLARE_API_TOKEN": token}, cwd=home)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith(f"config OK: {example}"), ok.stdout
    assert token not in ok.stdout + ok.stderr


def test_installed_demo_gets_ready(installed: Path, home: Path) -> None:
    port = free_port()
    cmd = [str(installed / "realtimekit-exporter"), "--demo",
           f"--web.listen-address=127.0.0.1:{port}"]  # fmt: skip
    demo = Process(cmd, home.parent / "demo.log", cwd=home, env=installed_env(installed, home))
    try:
        wait_ok(f"http://127.0.0.1:{port}/-/ready", demo, 60)
        with NO_PROXY.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body = response.read().decode()
        assert f'realtimekit_exporter_build_info{{version="{package_version()}"}} 1' in body
        assert "realtimekit_session_active{" in body
    finally:
        code = demo.stop(timeout=15)
    assert code == 0, demo.log()[-3000:]


def test_changelog_has_one_section_per_version() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", text, re.M)
    versions = [h.split()[0] for h in headings]
    assert versions, "CHANGELOG.md has no version sections"
    for heading, version in zip(headings, versions, strict=True):
        assert re.fullmatch(r"\d+\.\d+\.\d+\S*", version), f"not a version section: ## {heading}"
    assert len(set(versions)) == len(versions), f"a version has two sections: {versions}"
    assert versions[0] == package_version(), "the newest section is the package's version"
