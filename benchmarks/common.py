"""What every benchmark prints and records: table cells, table headers and the machine it ran on.

Why: a benchmark's numbers mean little without the machine, the package versions, the commit
and how busy the machine was (the load average before and after), and the three benchmarks
should record and print these alike.

    >>> fmt(12345.678, 1), fmt(None, 2)
    ('12,345.7', '-')
    >>> print_header("mode  texts/s")
    mode  texts/s
    -------------
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: Recorded by every benchmark (with torch), whether or not it uses them.
COMMON_PACKAGES = ("transformers", "bytewax", "numpy")


def dated_result(name: str) -> Path:
    """Where a benchmark's JSON goes by default: ``benchmarks/results/<UTC date>-<name>.json``,
    so every run adds to the history instead of replacing the last."""
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    return ROOT / "benchmarks" / "results" / f"{day}-{name}.json"


def fmt(value: float | None, digits: int = 0) -> str:
    """A table cell: ``value`` with thousands separators and ``digits`` decimals, or ``-``."""
    return "-" if value is None else f"{value:,.{digits}f}"


def print_header(header: str) -> None:
    """A table's header line, underlined to its width."""
    print(header)
    print("-" * len(header))


def cpu_model() -> str | None:
    """The CPU's model name from ``/proc/cpuinfo``, else what :mod:`platform` knows."""
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``; None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    return commit or None


def machine_info(load_before: float, **extra: Any) -> dict[str, Any]:
    """The machine, the packages and the commit, with a benchmark's own ``extra`` keys.

    ``load_before`` is the 1-minute load average when the benchmark began: other work on the
    machine skews every number, so the load before and after goes with them.
    """
    import torch  # its __version__ names the build (+cpu, +cu...); the metadata's does not

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{name: package_version(name) for name in COMMON_PACKAGES},
        "load_average_1m_before": round(load_before, 2),
        "load_average_1m_after": round(os.getloadavg()[0], 2),
        "git_commit": _git_commit(),
        **extra,
    }
