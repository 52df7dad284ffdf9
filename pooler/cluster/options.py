"""runpooler's cluster options, and joining the cluster they describe."""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from argparse import ArgumentParser

    from pooler.configsync import ConfigSync
    from pooler.node import Node

log = logging.getLogger("pooler")


def add_cluster_arguments(parser: ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--zookeeper",
        default=env("ZOOKEEPER_HOSTS", ""),
        metavar="HOST:PORT[,...]",
        help="join the cluster coordinated by this ZooKeeper ensemble (env ZOOKEEPER_HOSTS)",
    )
    parser.add_argument(
        "--zk-root",
        default=env("ZK_ROOT", "/greenvisor"),
        help="the cluster's root znode; clusters sharing an ensemble need different roots",
    )
    parser.add_argument(
        "--zk-session-timeout",
        type=float,
        default=10.0,
        help="ZooKeeper session timeout in seconds: how long a dead node keeps its pools",
    )
    parser.add_argument(
        "--internal-port",
        type=int,
        default=int(env("INTERNAL_PORT", "0") or 0),
        help="node-to-node port for relayed clients and cancels (0 = any free port; "
        "env INTERNAL_PORT)",
    )
    parser.add_argument(
        "--advertise-host",
        default=env("ADVERTISE_HOST", ""),
        help="the address other nodes reach this one at (default: --listen, or 127.0.0.1)",
    )
    parser.add_argument(
        "--node-id", default=env("NODE_ID", ""), help="this node's name (default n<index>)"
    )
    parser.add_argument(
        "--cluster-dir",
        default=env("GREENVISOR_CLUSTER_DIR", ""),
        help="without ZooKeeper: a directory shared by the node processes of this host "
        "(--workers makes one)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="node processes sharing the listener ports (SO_REUSEPORT)",
    )


def join_cluster(node: Node, sync: ConfigSync, opts: dict[str, Any]) -> Any:
    """Start the coordinator and the internal listener when configured; None otherwise."""
    from pooler.cluster.setup import make_coordinator, start_cluster

    coordinator = make_coordinator(
        opts["zookeeper"], opts["zk_root"], opts["zk_session_timeout"], opts["cluster_dir"]
    )
    if coordinator is None:
        return None
    coordinator.on_config = sync.wake
    try:
        _cluster, server = start_cluster(
            node,
            coordinator,
            opts["node_id"],
            opts["listen"],
            opts["advertise_host"],
            opts["internal_port"],
        )
    except Exception as exc:  # noqa: BLE001 - one clear line, then out
        where = opts["zookeeper"] or opts["cluster_dir"]
        sys.stderr.write(
            f"greenvisor: cannot join the cluster at {where}: {exc.__class__.__name__}: {exc}; "
            "check that ZooKeeper is reachable (--zookeeper) and the internal port is free "
            "(--internal-port)\n"
        )
        sys.stderr.flush()
        os._exit(1)
    return server
