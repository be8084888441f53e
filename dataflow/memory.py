"""The memory a process may use, for dashboards that show memory against the limit.

In a container that is its cgroup's limit; on a plain host, the machine's memory. Read from
the kernel's files, so no cAdvisor or kube-state-metrics is needed to graph it.
"""

from __future__ import annotations

from pathlib import Path


def memory_limit_bytes(
    cgroup: Path = Path("/sys/fs/cgroup"), meminfo: Path = Path("/proc/meminfo")
) -> int | None:
    """cgroup v2's ``memory.max`` or v1's ``memory.limit_in_bytes`` when set, else the
    machine's total memory; ``None`` if neither can be read.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "memory.max").write_text("max")
    >>> _ = (folder / "meminfo").write_text("MemTotal:       24576000 kB")
    >>> memory_limit_bytes(folder, folder / "meminfo")
    25165824000
    >>> _ = (folder / "memory.max").write_text("3221225472")
    >>> memory_limit_bytes(folder, folder / "meminfo")
    3221225472
    """
    for path in (cgroup / "memory.max", cgroup / "memory" / "memory.limit_in_bytes"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 says "no limit" as a huge number
            return int(text)
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
