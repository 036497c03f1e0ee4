"""``.env.example`` lists every setting of ``features/settings.py`` with a default that reads back as that default,
and ``.env`` itself is ignored by git (it holds keys and passwords)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from features.settings import PROJECT_ROOT, Settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / ".env.example"


def _script():
    spec = importlib.util.spec_from_file_location("env_example", ROOT / "scripts" / "env_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _entries(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"^# (AFTERSALES_\w+)=(.*)$", text, re.M)}


def test_every_setting_has_an_entry_and_the_file_is_up_to_date():
    entries = _entries(EXAMPLE.read_text())
    missing = [n for n in (f"AFTERSALES_{name.upper()}" for name in Settings.model_fields) if n not in entries]
    assert not missing, f"no entry in .env.example for {missing}: run `python scripts/env_example.py`"
    assert set(entries) == {f"AFTERSALES_{n.upper()}" for n in Settings.model_fields}
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "env_example.py"), "--check"], cwd=ROOT,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_new_setting_without_an_entry_is_caught():
    from pydantic import Field

    class Grown(Settings):
        refund_cap: float = Field(99.0, description="A setting added later.")

    text = _script().render(Grown)
    assert text != EXAMPLE.read_text() and "# AFTERSALES_REFUND_CAP=99.0" in text


def test_the_example_values_read_back_as_the_defaults(tmp_path, monkeypatch):
    for var in [v for v in os.environ if v.startswith("AFTERSALES_")]:
        monkeypatch.delenv(var)
    monkeypatch.chdir(PROJECT_ROOT)  # relative paths in .env are relative to where a command runs
    lines = [f"{k}={v.split('   #')[0]}" for k, v in _entries(EXAMPLE.read_text()).items() if "# unset" not in v]
    env = tmp_path / ".env"
    env.write_text("\n".join(lines) + "\n")
    read, default = Settings(_env_file=env), Settings(_env_file=None)
    for name in Settings.model_fields:
        got, want = getattr(read, name), getattr(default, name)
        if isinstance(want, Path):
            got, want = got.resolve(), want.resolve()
        assert got == want, (name, got, want)


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_dot_env_is_ignored_by_git_and_the_example_is_not():
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT).returncode
    example = subprocess.run(["git", "check-ignore", "-q", ".env.example"], cwd=ROOT).returncode
    assert ignored == 0 and example == 1
