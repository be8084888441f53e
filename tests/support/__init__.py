"""What the tests share: real servers they start (Kafka, Redis, Prometheus), the pure
reference the flow is checked against, readers of the flow's topics, and fakes of the
models where the real one is not the point."""

from pathlib import Path

#: The repository's root.
ROOT = Path(__file__).resolve().parents[2]
