"""What every real server a test starts shares: its install, its log, and a clean stop."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest


def unavailable(what: str, reason: str, needs: str) -> NoReturn:
    """A server the tests need could not start: fail under CI (``CI=true``), where a
    missing server is the run's fault; elsewhere skip, loudly, naming what it needs."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} failed to start under CI: {reason}")
    pytest.skip(f"{what} unavailable ({reason}); {needs}")


def stop_processes(*processes: subprocess.Popen[bytes]) -> None:
    """SIGINT every process still running (the flow's clean stop), then wait for each,
    killing one that takes longer than 30 s."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _binary(name: str) -> str | None:
    return shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)


def ensure_debian_package(package: str, *binaries: str) -> list[str]:
    """The paths of ``binaries``, installing Debian's ``package`` first if one is missing
    (the test command runs as root on Debian; stale package lists are refreshed once)."""
    found = [_binary(name) for name in binaries]
    if all(found):
        return [path for path in found if path]
    apt = shutil.which("apt-get")
    if apt is None:
        raise RuntimeError(f"{binaries[0]} is not on PATH and there is no apt-get to install it")
    if os.geteuid() != 0:
        raise RuntimeError(f"{binaries[0]} is not on PATH; install it: apt-get install {package}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-q", "--no-install-recommends", package]
    done = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        subprocess.run([apt, "update", "-q"], env=env, capture_output=True, check=False)
        done = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    found = [_binary(name) for name in binaries]
    if not all(found):
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise RuntimeError(f"apt-get install {package} failed (exit {done.returncode}):\n{tail}")
    return [path for path in found if path]


class ServerProcess:
    """A server process with a log file; subclasses start ``_process`` and set ``log_path``."""

    log_path: Path
    stop_timeout_s: float = 30.0

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log, for failure messages."""
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Terminate the server, killing it if it does not stop in time."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None
