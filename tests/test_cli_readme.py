"""The README's commands work verbatim (issue 22 item 8), run by bash in a directory laid out as
a fresh clone after the README's install: ``.venv`` and ``config.example.yaml``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.api import TOKEN

pytestmark = pytest.mark.process

ROOT = Path(__file__).parent.parent


def readme_block(heading: str) -> str:
    """The first ``sh`` block after ``heading`` in README.md."""
    text = (ROOT / "README.md").read_text()
    after = text[text.index(heading) :]
    match = re.search(r"```sh\n(.*?)```", after, re.S)
    assert match, heading
    return match.group(1)


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A directory with the README's ``.venv`` (this interpreter's environment) and the example."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "realtimekit-exporter").exists():
        pytest.skip("the tests do not run from a virtual environment with the exporter installed")
    (tmp_path / ".venv").symlink_to(venv)
    shutil.copy(ROOT / "config.example.yaml", tmp_path)
    return tmp_path


def bash(script: str, cwd: Path, path: str = "/usr/bin:/bin") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euc", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={"PATH": path, "HOME": str(cwd)},
        timeout=120,
    )


def test_running_it_for_real_works_verbatim(clone: Path) -> None:
    block = readme_block("## Running it for real")
    lines = [line for line in block.splitlines() if line.strip()]
    assert lines[0].startswith("export CLOUDFLARE_API_TOKEN=...")
    assert lines[-1].startswith(".venv/bin/realtimekit-exporter --config.file config.yaml")
    # Every line but the last (which serves until stopped), the token filled in.
    script = "\n".join([f"export CLOUDFLARE_API_TOKEN={TOKEN}", *lines[1:-1]])
    result = bash(script, clone)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config OK: config.yaml: ")


def test_the_shard_split_command_works_verbatim_once_activated(clone: Path) -> None:
    readme = (ROOT / "README.md").read_text().replace("\n", " ")
    match = re.search(r"`(realtimekit-exporter\s+--config\.file[^`]*--total-shards 4)`", readme)
    assert match, "the README's --config.check --total-shards command"
    command = " ".join(match.group(1).split())
    script = f". .venv/bin/activate\nexport CLOUDFLARE_API_TOKEN={TOKEN}\n{command}"
    result = bash(f"cp config.example.yaml config.yaml\n{script}", clone)
    assert result.returncode == 0, result.stderr
    shards = [line for line in result.stdout.splitlines() if line.startswith("shard ")]
    assert [line.split(":")[0] for line in shards] == [f"shard {i}" for i in range(4)]
