"""Shared fixtures. The ``kumoq`` fixture comes from the kumoq.testing pytest plugin;
``redis_server`` (a real redis-server) and ``redis_cluster`` (three of them as a cluster) from
tests/redis_server.py."""

from tests.redis_server import redis_cluster, redis_server  # noqa: F401  # fixtures, for every test
