"""Read events from a JSONL file as bytes, with each line's origin, resumable after a crash.

Bytewax's ``FileSource`` decodes lines as text, so one invalid UTF-8 byte would crash the flow
before validation could dead-letter it. This source hands over raw bytes and where they
came from (``path:byte_offset``, stable across replays, like a Kafka offset), and snapshots
the byte offset so a restarted flow resumes where the last snapshot left it.
"""

from __future__ import annotations

from pathlib import Path

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

#: A raw message and its origin: what every input step hands to ``parse_event``.
RawLine = tuple[bytes, str]


class _JsonlPartition(StatefulSourcePartition[RawLine, int]):
    def __init__(self, path: Path, batch_size: int, offset: int) -> None:
        self._path = path
        self._batch_size = batch_size
        self._file = path.open("rb")
        self._file.seek(offset)

    def next_batch(self) -> list[RawLine]:
        batch: list[RawLine] = []
        while len(batch) < self._batch_size:
            offset = self._file.tell()
            line = self._file.readline()
            if not line:
                if batch:
                    return batch
                raise StopIteration
            batch.append((line.rstrip(b"\r\n"), f"{self._path}:{offset}"))
        return batch

    def snapshot(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()


class JsonlSource(FixedPartitionedSource[RawLine, int]):
    """One JSONL file, read by one worker, as ``(line bytes, "path:offset")`` pairs."""

    def __init__(self, path: Path, batch_size: int = 1000) -> None:
        self._path = path
        self._batch_size = batch_size

    def list_parts(self) -> list[str]:
        return [str(self._path)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _JsonlPartition:
        return _JsonlPartition(self._path, self._batch_size, resume_state or 0)
