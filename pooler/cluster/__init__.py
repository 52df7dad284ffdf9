"""Cluster mode: several Greenvisor nodes, one owner per pool (see docs/CLUSTER.md).

``coordinator`` is the interface (with :class:`~pooler.cluster.local.LocalCoordinator` for
one host and :class:`~pooler.cluster.zk.ZkCoordinator` for ZooKeeper); ``cluster`` is what a
node does with it (ownership, fencing, failure handling); ``internal`` is the node-to-node
connection (relayed clients and forwarded cancels).
"""

from pooler import hotpath

__path__ = hotpath.package_path(__path__, __name__)  # compiled modules first, if active
