"""``profilestream cluster-init``: prepare one pod of the StatefulSet before its flow starts.

    profilestream cluster-init            # in the init container: settings from its env

It writes the Bytewax hostfile (line *i* is process *i*) and makes sure the pod's recovery
volume holds its share of the recovery partitions. Bytewax needs the cluster as a whole to
hold every partition exactly once, wherever it is, so the partitions are spread over the
volumes of the first *n* pods (``--spread-over``, the replicas of the cluster's first start):
pod *k* keeps partitions *p* with ``p % n == k``, and pods added later by scaling out hold
none. A volume lost with its pod then loses only that share, not the whole store.

An empty recovery directory is never filled silently: on a running cluster it means the
volume was lost, and starting again would silently re-read the events topic from what its
retention still holds. It is filled only with ``--init-recovery empty`` (the
``deploy/first-start`` overlay sets it for a cluster's first start); otherwise the init
container fails, saying what happened and what to do.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

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


def run(args: argparse.Namespace) -> int:
    if args.init_recovery not in ("never", "empty"):
        print(
            f"cluster-init: RECOVERY_INIT must be never or empty, not {args.init_recovery!r}",
            file=sys.stderr,
        )
        return 2
    pod: str = args.pod
    ordinal = int(pod.rsplit("-", 1)[-1]) if pod else -1
    if not 0 <= ordinal < args.replicas:
        print(
            f"cluster-init: pod {pod!r} is not one of {args.replicas} replicas: "
            "set BYTEWAX_REPLICAS to the StatefulSet's spec.replicas",
            file=sys.stderr,
        )
        return 1
    lines = hostfile_lines(args.statefulset, args.service, args.namespace, args.port, args.replicas)
    args.hostfile.write_text("".join(f"{line}\n" for line in lines))
    print(f"hostfile {args.hostfile}:\n" + "\n".join(lines))
    spread_over = args.spread_over or args.replicas
    try:
        init = args.init_recovery == "empty"
        print(prepare_recovery(args.recovery_dir, args.partitions, spread_over, ordinal, init))
    except RecoveryMissing as exc:
        print(f"cluster-init: {exc}", file=sys.stderr)
        return 1
    return 0


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def add_command(subparsers: Any) -> None:
    """Register ``profilestream cluster-init``."""
    parser = subparsers.add_parser(
        "cluster-init",
        help="write the Bytewax hostfile and this pod's share of the recovery partitions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--pod", default=_env("BYTEWAX_POD_NAME"), help="this pod's name (env BYTEWAX_POD_NAME)"
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=int(_env("BYTEWAX_REPLICAS", "1")),
        help="the StatefulSet's spec.replicas (env BYTEWAX_REPLICAS)",
    )
    parser.add_argument(
        "--statefulset",
        default=_env("BYTEWAX_STATEFULSET_NAME", "profilestream"),
        help="env BYTEWAX_STATEFULSET_NAME",
    )
    parser.add_argument(
        "--service",
        default=_env("SERVICE_NAME", "profilestream"),
        help="the headless service (env SERVICE_NAME)",
    )
    parser.add_argument(
        "--namespace", default=_env("POD_NAMESPACE", "default"), help="env POD_NAMESPACE"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(_env("TIMELY_PORT", "9999")),
        help="the processes' port (env TIMELY_PORT)",
    )
    parser.add_argument(
        "--hostfile",
        type=Path,
        default=Path(_env("BYTEWAX_HOSTFILE_PATH", "hostfile.txt")),
        help="env BYTEWAX_HOSTFILE_PATH",
    )
    parser.add_argument(
        "--recovery-dir",
        type=Path,
        default=Path(_env("BYTEWAX_RECOVERY_DIRECTORY", "recovery")),
        help="env BYTEWAX_RECOVERY_DIRECTORY",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=int(_env("RECOVERY_PARTITIONS", "16")),
        help="recovery partitions of the whole cluster, fixed for the life of its state "
        "(env RECOVERY_PARTITIONS)",
    )
    parser.add_argument(
        "--spread-over",
        type=int,
        default=int(_env("RECOVERY_SPREAD_OVER", "0")),
        help="the pods whose volumes hold the partitions: the replicas of the cluster's first "
        "start, unchanged when scaling out (default: --replicas; env RECOVERY_SPREAD_OVER)",
    )
    parser.add_argument(
        "--init-recovery",
        choices=("never", "empty"),
        default=_env("RECOVERY_INIT", "never"),
        help="'empty': create this pod's partitions if its directory has none; 'never': fail "
        "instead (env RECOVERY_INIT)",
    )
    parser.set_defaults(handler=run)
