"""mailgate installed as ops install it: a built wheel in a fresh venv outside the checkout.

The daemon then runs from another working directory with a minimal config and answers a mail
with the acknowledgement, which needs the templates shipped inside the package.

Costs about 20 s: the wheel is built with pip from a copy of the checkout (so no build/ or
egg-info lands in the working tree), and dependencies come from the package index (pip's cache
makes that quick after the first run). The venv is made without pip and filled by the
checkout's pip (``pip --python``), which saves the ensurepip step and changes nothing in what
gets installed.
"""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.support.mails import body
from tests.support.sink import SmtpSink, free_port

REPO = Path(__file__).resolve().parent.parent
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "var", "build", "dist", "*.egg-info",
                                    "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis")


def _run(args: list[str | Path], cwd: Path, env: dict[str, str],
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _clean_env() -> dict[str, str]:
    """Nothing that could point the installed program back at the checkout or its venv."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "MAILGATE_CONFIG", "NOTIFY_SOCKET",
            "WATCHDOG_USEC", "WATCHDOG_PID"}
    return {k: v for k, v in os.environ.items() if k not in drop}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a fresh venv holding mailgate installed from its wheel."""
    root = tmp_path_factory.mktemp("install")
    env = _clean_env()
    source = root / "checkout"
    shutil.copytree(REPO, source, symlinks=True, ignore=NOT_SOURCE)
    wheels = root / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
          "-q", "-w", wheels, source], cwd=root, env=env)
    (wheel,) = wheels.glob("mailgate-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root, env=env)
    _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q",
          "--disable-pip-version-check", wheel], cwd=root, env=env)
    shutil.rmtree(source)
    return venv / "bin"


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path,
                   timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"port {port} not open after {timeout}s:\n{log.read_text()}")


@pytest.mark.timeout(600)
def test_installed_wheel_serves_and_acknowledges(installed: Path, tmp_path: Path,
                                                 sink: SmtpSink) -> None:
    env = _clean_env()
    ops = tmp_path / "ops"  # the working directory: neither the checkout nor the venv
    ops.mkdir()
    where = _run([installed / "python", "-c", "import mailgate; print(mailgate.__file__)"],
                 cwd=ops, env=env).stdout
    assert str(installed.parent) in where and str(REPO) not in where

    port = free_port()
    config = ops / "mailgate.toml"
    config.write_text(f"""
[desk]
address = "servicedesk@desk.example"
[smtp]
host = "127.0.0.1"
port = {port}
[outbound]
relay_host = "127.0.0.1"
relay_port = {sink.port}
""")
    mailgate = [installed / "mailgate", "--config", config]
    _run([*mailgate, "db", "upgrade"], cwd=ops, env=env)
    _run([*mailgate, "sites", "add", "1234", "Demo"], cwd=ops, env=env)
    _run([*mailgate, "editors", "add", "1234", "eva@x.example", "--name", "Eva"],
         cwd=ops, env=env)

    log = ops / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(a) for a in [*mailgate, "serve"]], cwd=ops, env=env,
                                stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    try:
        _wait_for_port(port, proc, log)
        mail = EmailMessage()
        mail["From"] = "Eva <eva@x.example>"
        mail["To"] = "servicedesk@desk.example"
        mail["Subject"] = "Site 1234: contact form gives error 500"
        mail["Message-ID"] = "<install-test-1@x.example>"
        mail.set_content("The form on https://www.example.be/contact fails with error 500.")
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.send_message(mail)
        (ack,) = sink.wait_for(1, timeout=30)
        assert "[SD-1]" in ack["Subject"]
        assert ack["To"] == "eva@x.example"
        assert "SD-1" in body(ack)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log.read_text()
    assert (ops / "var" / "mailgate.db").exists()  # state_dir default: relative to the cwd
