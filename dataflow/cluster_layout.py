"""Where a Bytewax cluster's processes find each other and their recovery partitions.

Bytewax needs the cluster as a whole to hold every recovery partition exactly once,
wherever it is (it reads a partition's index from the file), so the partitions are spread
over the volumes of the first *n* processes (the replicas of the cluster's first start):
process *k* keeps partitions *p* with ``p % n == k``, and processes added later hold none. A
volume lost with its pod then loses only that share, not the whole store. An empty
recovery directory is filled only when asked: on a running cluster it means a volume was
lost, and starting again would silently re-read the events topic from what its retention
still holds. ``profilestream cluster-init`` runs this in the StatefulSet's init container.
"""

from __future__ import annotations

import shutil
from pathlib import Path

PART_GLOB = "part-*.sqlite3"


def hostfile_lines(
    statefulset: str, service: str, namespace: str, port: int, replicas: int
) -> list[str]:
    """The Bytewax hostfile of a StatefulSet: the pods' stable DNS names, in ordinal order.

    >>> hostfile_lines("ps", "ps", "prod", 9999, 2)
    ['ps-0.ps.prod.svc.cluster.local:9999', 'ps-1.ps.prod.svc.cluster.local:9999']
    """
    return [
        f"{statefulset}-{i}.{service}.{namespace}.svc.cluster.local:{port}" for i in range(replicas)
    ]


def recovery_share(partitions: int, spread_over: int, ordinal: int) -> list[int]:
    """The recovery partitions pod ``ordinal`` keeps on its volume, the partitions being
    spread over the first ``spread_over`` pods.

    >>> recovery_share(8, 3, 1), recovery_share(8, 3, 3)
    ([1, 4, 7], [])
    """
    return [p for p in range(partitions) if p % spread_over == ordinal]


class RecoveryMissing(RuntimeError):
    """The pod's recovery directory is empty and re-initialising it was not asked for."""


def prepare_recovery(
    directory: Path, partitions: int, spread_over: int, ordinal: int, init: bool
) -> str:
    """Make sure ``directory`` holds pod ``ordinal``'s share of the recovery partitions; say
    what was found or done. Creates partitions only into an empty directory, and only with
    ``init``; raises :class:`RecoveryMissing` otherwise."""
    directory.mkdir(parents=True, exist_ok=True)
    found = sorted(directory.glob(PART_GLOB))
    share = recovery_share(partitions, spread_over, ordinal)
    if found:
        return f"{directory}: {len(found)} recovery partitions found, kept as they are"
    if not share:
        return f"{directory}: holds no recovery partitions (pods 0-{spread_over - 1} hold them)"
    if not init:
        raise RecoveryMissing(
            f"{directory} holds no recovery partitions. On a cluster's first start, run it once "
            "with RECOVERY_INIT=empty (kubectl apply -k deploy/first-start). If this pod ran "
            "before, its volume was lost: restore it from a backup; or, to give up that state "
            "and start from what the events topic still retains, stop every pod, empty every "
            "pod's recovery directory and start with RECOVERY_INIT=empty (deploy/README.md, "
            "'Recovery')."
        )
    from bytewax.recovery import init_db_dir

    staging = directory / ".init"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    init_db_dir(staging, partitions)
    for part in share:  # Bytewax reads the index from the file, not its name
        (staging / f"part-{part}.sqlite3").rename(directory / f"part-{part}.sqlite3")
    shutil.rmtree(staging)
    return f"{directory}: created recovery partitions {share} of {partitions}"
