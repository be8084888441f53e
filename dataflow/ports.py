"""Listening ports checked before a process starts anything: a port in use is a clear error
at start-up, not a Rust panic (Bytewax's metrics server) or a half-started service."""

from __future__ import annotations

import socket


def ensure_free(host: str, port: int, what: str) -> None:
    """Raise ``ValueError`` if ``host:port`` cannot be listened on (``what`` names the use)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ValueError(f"cannot {what} on port {port} of {host}: {exc.strerror}") from None
