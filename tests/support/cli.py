"""The ``profilestream`` command as a user runs it: a process, from the repository root."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support import ROOT


def profilestream(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``profilestream ARGS`` (as ``python -m dataflow``); its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "dataflow", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=False,
    )
