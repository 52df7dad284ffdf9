"""Turning runpooler's cluster options into a running :class:`~pooler.cluster.cluster.Cluster`.

Kept out of the command so the command only wires: which coordinator (ZooKeeper when
hosts are given, else the local one when a cluster directory is given, else none: a single
node exactly as without cluster support), the cluster secret, the internal listener, and
the hook that publishes tenant changes made through this node's API to every node.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from gevent.pool import Pool as GreenletPool
from gevent.server import StreamServer

from pooler.cluster.cluster import Cluster
from pooler.cluster.coordinator import Coordinator
from pooler.cluster.internal import handle_peer

if TYPE_CHECKING:
    from pooler.node import Node

log = logging.getLogger("pooler.cluster")


def cluster_secret() -> bytes:
    """CLUSTER_SECRET, else derived from VAULT_ENC_KEY (which every node of one metadata DB
    shares anyway); never logged."""
    secret = os.environ.get("CLUSTER_SECRET") or ""
    if secret:
        return hashlib.sha256(b"greenvisor-cluster-secret\0" + secret.encode()).digest()
    vault = os.environ.get("VAULT_ENC_KEY", "")
    return hashlib.sha256(b"greenvisor-cluster-vault\0" + vault.encode()).digest()


def make_coordinator(
    zookeeper: str, zk_root: str, session_timeout: float, cluster_dir: str
) -> Coordinator | None:
    if zookeeper:
        from pooler.cluster.zk import ZkCoordinator

        return ZkCoordinator(zookeeper, zk_root, session_timeout)
    if cluster_dir:
        from pooler.cluster.local import LocalCoordinator

        return LocalCoordinator(cluster_dir)
    return None


def internal_listener(host: str, port: int, node: Node) -> StreamServer:
    """The node-to-node listener (bound now; started by the caller)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    # gevent's accept loop takes up to 100 connections per readiness event and stops at
    # EAGAIN: a blocking listening socket would block the whole hub in accept() after the
    # first one, until the next peer connects (ZooKeeper pings stop, the session expires).
    sock.setblocking(False)
    return StreamServer(sock, lambda s, a: handle_peer(s, a, node), spawn=GreenletPool(10000))


def advertised_host(listen: str, advertise: str) -> str:
    if advertise:
        return advertise
    if listen in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return listen


def start_cluster(
    node: Node,
    coordinator: Coordinator,
    node_id: str,
    listen: str,
    advertise: str,
    internal_port: int,
) -> tuple[Cluster, StreamServer]:
    cluster = Cluster(node, coordinator, cluster_secret())
    server = internal_listener(listen, internal_port, node)
    server.start()
    port = server.socket.getsockname()[1]
    cluster.start(node_id, advertised_host(listen, advertise), port)
    install_config_hooks(cluster)
    return cluster, server


def install_config_hooks(cluster: Cluster) -> None:
    """After a committed tenant/user change made in this process (the API, the admin),
    tell every node at once instead of letting them find it at their next poll."""
    import gevent
    from django.db import transaction
    from django.db.models.signals import post_delete, post_save

    from tenants.models import Tenant, TenantUser

    def publish() -> None:
        try:
            cluster.coord.publish_config()
        except Exception:  # noqa: BLE001 - the poll still finds it
            log.warning("cannot publish a configuration change to the cluster", exc_info=True)

    loop = gevent.get_hub().loop

    def changed(sender: Any, **kwargs: Any) -> None:
        transaction.on_commit(
            lambda: loop.run_callback_threadsafe(gevent.spawn, publish), using=kwargs.get("using")
        )

    for model in (Tenant, TenantUser):
        post_save.connect(changed, sender=model, weak=False, dispatch_uid=f"gv.cluster.s.{model}")
        post_delete.connect(changed, sender=model, weak=False, dispatch_uid=f"gv.cluster.d.{model}")
