"""The benchmarks' throw-away cluster: see :mod:`qcompute.server.testing`."""
from qcompute.server.testing import ClusterProcess, running_cluster

__all__ = ["ClusterProcess", "running_cluster"]
