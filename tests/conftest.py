"""Shared fixtures. The ``kumoq`` fixture comes from the kumoq.testing pytest plugin;
``redis_server`` (a real redis-server) from tests/redis_server.py."""

from tests.redis_server import redis_server  # noqa: F401  # the fixture, for every test
