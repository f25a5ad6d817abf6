"""systemd/: the unit passes `systemd-analyze verify`, and the sysusers and tmpfiles files make
the user and the directories the unit names.

`systemd-analyze verify` works on a plain file without a running systemd (as in a container),
but insists that the programs in Exec*= exist: the unit is checked from a copy whose
/opt/mailgate/.venv path points at this checkout's venv. Its parse errors are warnings
("Unknown key ..., ignoring") with exit status 0, so the output is checked too.

The tools come with the `systemd` package (.ci/run installs it). Where they are missing the
tests skip, except under CI=true, where they fail, as the Dovecot tests do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "systemd"
UNIT = SYSTEMD / "mailgate.service"
INSTALLED = "/opt/mailgate/.venv/bin/mailgate"

pytestmark = pytest.mark.timeout(60)


def _require(tool: str) -> str:
    path = shutil.which(tool) or next(
        (p for d in ("/usr/bin", "/bin", "/usr/sbin") if os.access(p := f"{d}/{tool}", os.X_OK)),
        None)
    if path is None:
        reason = f"{tool} not installed: apt-get install systemd"
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"{reason} (CI=true, refusing to skip)", pytrace=False)
        pytest.skip(reason)
    return path


def _directives(text: str) -> dict[str, list[str]]:
    """Key -> values of a unit file (all sections; later values after earlier ones)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def _verify(unit_text: str, tmp_path: Path) -> tuple[int, list[str]]:
    """Runs systemd-analyze verify on a copy that runs this checkout's mailgate; returns the
    exit status and the output lines about the unit."""
    analyze = _require("systemd-analyze")
    mailgate = Path(sys.executable).parent / "mailgate"
    assert mailgate.is_file(), f"{mailgate} missing: pip install -e . in the venv"
    copy = tmp_path / "mailgate.service"
    copy.write_text(unit_text.replace(INSTALLED, str(mailgate)))
    proc = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                          timeout=30)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines()
             if "mailgate" in line]  # not the host's own units, should any be odd
    return proc.returncode, lines


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    code, lines = _verify(UNIT.read_text(), tmp_path)
    assert (code, lines) == (0, []), "\n".join(lines)


@pytest.mark.parametrize(("broken", "says"), [
    (("TimeoutStopSec=30", "TimeoutStopSec=thirty"), "Failed to parse"),
    (("\nExecReload=", "\nExecRelaod="), "Unknown key"),
    (("\nType=notify\n", "\nType=notify-reloaded\n"), "Failed to parse service type"),
], ids=["time", "key", "type"])
def test_verify_catches_a_broken_unit(tmp_path: Path, broken: tuple[str, str],
                                      says: str) -> None:
    """The check above is not vacuous: a typo in the unit is reported."""
    old, new = broken
    text = UNIT.read_text()
    assert old in text
    _code, lines = _verify(text.replace(old, new, 1), tmp_path)
    assert any(says in line for line in lines), lines


def test_unit_speaks_the_daemons_protocol() -> None:
    """What mailgate/daemon.py implements is what the unit asks for."""
    d = _directives(UNIT.read_text())
    assert d["Type"] == ["notify"]  # READY=1 after the listener; RELOADING=1/READY=1 on HUP
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["KillSignal"] == ["SIGTERM"]
    assert int(d["TimeoutStopSec"][0]) >= 30  # tests/test_daemon.py stops well inside it
    assert int(d["WatchdogSec"][0]) > 0
    assert d["RestartPreventExitStatus"] == ["78"]
    assert "AF_UNIX" in d["RestrictAddressFamilies"][0].split()  # the notify socket
    assert d["User"] == ["mailgate"] and d["Group"] == ["mailgate"]
    assert d["WorkingDirectory"] == ["/var/lib/mailgate"]
    assert d["Environment"] == ["MAILGATE_CONFIG=/etc/mailgate/mailgate.toml"]


def test_sysusers_and_tmpfiles_make_the_user_and_directories(tmp_path: Path) -> None:
    sysusers, tmpfiles = _require("systemd-sysusers"), _require("systemd-tmpfiles")
    if os.geteuid() != 0:
        reason = "systemd-tmpfiles --create needs root to chown"
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"{reason} (CI=true, refusing to skip)", pytrace=False)
        pytest.skip(reason)
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for args in ([sysusers, f"--root={root}", str(SYSTEMD / "mailgate.sysusers")],
                 [tmpfiles, f"--root={root}", "--create", str(SYSTEMD / "mailgate.tmpfiles")]):
        proc = subprocess.run(args, capture_output=True, text=True, timeout=30)
        complaints = [line for line in proc.stderr.splitlines() if "mailgate." in line]
        assert proc.returncode == 0 and not complaints, f"{args}\n{proc.stderr}"

    users = {fields[0]: fields for fields in
             (line.split(":") for line in (root / "etc" / "passwd").read_text().splitlines())}
    groups = {fields[0]: fields for fields in
              (line.split(":") for line in (root / "etc" / "group").read_text().splitlines())}
    user = users["mailgate"]
    uid, gid, home, shell = int(user[2]), int(user[3]), user[5], user[6]
    assert int(groups["mailgate"][2]) == gid
    assert home == "/var/lib/mailgate" and shell.endswith("nologin")
    assert uid < 1000  # a system user

    state = (root / "var" / "lib" / "mailgate").stat()
    assert (state.st_uid, state.st_gid, state.st_mode & 0o7777) == (uid, gid, 0o750)
    conf = (root / "etc" / "mailgate").stat()
    assert (conf.st_uid, conf.st_gid, conf.st_mode & 0o7777) == (0, gid, 0o750)

    # The unit's names are the ones made here.
    d = _directives(UNIT.read_text())
    assert d["User"] == ["mailgate"] and d["Group"] == ["mailgate"]
    assert d["WorkingDirectory"] == ["/var/lib/mailgate"]
    config = Path(d["Environment"][0].partition("=")[2])
    assert config.parent == Path("/etc/mailgate")
