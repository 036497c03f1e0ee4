"""scripts/system-deps.sh, the step `make test` and .ci/run take before the suite: it installs the programs the tests
start (redis-server, PostgreSQL's initdb, Chromium) from Debian where missing, and where it cannot, says in one line
what to run and lets the tests go on. Run here with a PATH of fake programs, so nothing is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "system-deps.sh"
BASH = "/bin/bash"
PROGRAMS = ("redis-server", "initdb", "chromium")


def _fake(bin_dir: Path, name: str, body: str = "exit 0") -> None:
    path = bin_dir / name
    path.write_text(f"#!{BASH}\n{body}\n")
    path.chmod(0o755)


def _run(bin_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([BASH, str(SCRIPT)], env={"PATH": str(bin_dir), "HOME": str(bin_dir)},
                          capture_output=True, text=True, timeout=30)


def _fake_apt(bin_dir: Path, log: Path, fail: bool = False) -> None:
    """apt-get that logs its arguments and, on install, puts the programs on PATH (or fails like a broken mirror);
    sudo that runs its command (non-root runs take the sudo path)."""
    cp = shutil.which("cp")  # by full path: PATH holds only the fakes
    install = "\n".join(f'{cp} "$0.ok" "{bin_dir}/{p}"' for p in PROGRAMS)
    _fake(bin_dir, "apt-get.ok")
    _fake(bin_dir, "apt-get", f'echo "$DEBIAN_FRONTEND $*" >> "{log}"\n'
                              + ("exit 100" if fail else f'[ "$1" = install ] && {{\n{install}\n}}\nexit 0'))
    _fake(bin_dir, "sudo", 'while [ "${1#-}" != "$1" ]; do shift; done\nexec "$@"')


def test_nothing_to_do_when_every_program_is_there(tmp_path):
    for name in PROGRAMS:
        _fake(tmp_path, name)
    _fake_apt(tmp_path, tmp_path / "apt.log")
    out = _run(tmp_path)
    assert out.returncode == 0 and out.stdout == "" and out.stderr == ""
    assert not (tmp_path / "apt.log").exists()


def test_without_apt_it_names_the_install_command_in_one_line_and_goes_on(tmp_path):
    out = _run(tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and out.stderr == "", out.stdout + out.stderr
    assert "apt-get install -y redis-server" in lines[0] and "chromium chromium-driver" in lines[0]


def test_it_installs_what_is_missing_with_apt_and_then_has_nothing_to_do(tmp_path):
    _fake(tmp_path, "chromium")
    log = tmp_path / "apt.log"
    _fake_apt(tmp_path, log)
    out = _run(tmp_path)
    assert out.returncode == 0 and "installing from Debian: redis-server" in out.stdout, out.stdout + out.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "noninteractive update -qq"
    assert calls[1].startswith("noninteractive install -y -qq redis-server")
    assert "chromium" not in calls[1]  # already there
    for name in PROGRAMS:
        assert (tmp_path / name).exists()
    again = _run(tmp_path)
    assert again.returncode == 0 and again.stdout == "" and len(log.read_text().splitlines()) == 2


def test_a_failed_install_is_one_line_naming_the_command_and_the_tests_go_on(tmp_path):
    _fake_apt(tmp_path, tmp_path / "apt.log", fail=True)
    out = _run(tmp_path)
    assert out.returncode == 0
    failed = [line for line in out.stdout.splitlines() if "could not install" in line]
    assert len(failed) == 1 and "sudo apt-get install -y redis-server" in failed[0], out.stdout


def test_make_test_runs_it_unless_told_to_skip():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "scripts/system-deps.sh" in recipe and "SYSTEM_DEPS" in recipe
    dry = subprocess.run(["make", "-n", "test", "SYSTEM_DEPS=skip"], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, MAKEFLAGS=""))
    if dry.returncode == 0:  # make is there: the skip really drops the step
        assert "system-deps.sh" in dry.stdout and '[ "skip" = skip ]' in dry.stdout
