"""What every real server a test starts shares: its log, and a clean stop."""

from __future__ import annotations

import subprocess
from pathlib import Path


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
