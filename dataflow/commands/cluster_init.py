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
