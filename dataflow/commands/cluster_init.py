"""``profilestream cluster-init``: prepare one pod of the StatefulSet before its flow starts.

    profilestream cluster-init            # in the init container: settings from its env

It writes the Bytewax hostfile (line *i* is process *i*) and makes sure the pod's recovery
volume holds its share of the recovery partitions, spread over the first ``--spread-over``
pods (:mod:`dataflow.cluster_layout`). An empty recovery directory is filled only with
``--init-recovery empty`` (the ``deploy/first-start`` overlay sets it for a cluster's first
start); otherwise the init container fails, saying what happened and what to do.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from dataflow.cluster_layout import RecoveryMissing, hostfile_lines, prepare_recovery


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


#: Each flag: the init container's variable it defaults to, that variable's default, the
#: value's type and what it is. Defaults stay strings: argparse converts them only when
#: this command runs, so a bad variable cannot break the other commands.
_OPTIONS: tuple[tuple[str, str, str, type, str], ...] = (
    ("--pod", "BYTEWAX_POD_NAME", "", str, "this pod's name"),
    ("--replicas", "BYTEWAX_REPLICAS", "1", int, "the StatefulSet's spec.replicas"),
    ("--statefulset", "BYTEWAX_STATEFULSET_NAME", "profilestream", str, "the StatefulSet"),
    ("--service", "SERVICE_NAME", "profilestream", str, "the headless service"),
    ("--namespace", "POD_NAMESPACE", "default", str, "the pods' namespace"),
    ("--port", "TIMELY_PORT", "9999", int, "the processes' port"),
    ("--hostfile", "BYTEWAX_HOSTFILE_PATH", "hostfile.txt", Path, "the hostfile to write"),
    ("--recovery-dir", "BYTEWAX_RECOVERY_DIRECTORY", "recovery", Path, "this pod's folder"),
    (
        "--partitions", "RECOVERY_PARTITIONS", "16", int,
        "recovery partitions of the whole cluster, fixed for the life of its state",
    ),
    (
        "--spread-over", "RECOVERY_SPREAD_OVER", "0", int,
        "the pods whose volumes hold the partitions: the replicas of the cluster's first "
        "start, unchanged when scaling out (0: --replicas)",
    ),
    (
        "--init-recovery", "RECOVERY_INIT", "never", str,
        "'empty': create this pod's partitions if its directory has none; 'never': fail instead",
    ),
)  # fmt: skip


def add_command(subparsers: Any) -> None:
    """Register ``profilestream cluster-init``."""
    parser = subparsers.add_parser(
        "cluster-init",
        help="write the Bytewax hostfile and this pod's share of the recovery partitions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for flag, variable, default, kind, what in _OPTIONS:
        parser.add_argument(
            flag,
            type=kind,
            default=os.environ.get(variable, default),
            help=f"{what} (env {variable})",
        )
    parser.set_defaults(handler=run)
