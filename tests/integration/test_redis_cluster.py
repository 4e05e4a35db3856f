"""kumoq.redis_throttles against a real redis cluster (the ``redis_cluster`` fixture: three
cluster-enabled redis-server processes, the slots shared out by ``redis-cli --cluster create``).

``kumo.configure_redis_throttles{node = {three urls}}`` makes a cluster client by default: two
such clients (two kumoq nodes) share GCRA throttles and connection-limit leases whatever node
holds a key's slot, and a cluster whose nodes all stop falls back to the process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio.cluster import RedisCluster as ClusterClient

from kumoq.config.redis import RedisThrottleConfig
from kumoq.config.values import LimitSpec, ThrottleSpec
from kumoq.redis_throttles import RedisLease, RedisThrottles
from kumoq.throttle import Refused, throttle_key
from tests.redis_server import RedisCluster

pytestmark = pytest.mark.integration

# Keys whose slots fall on different nodes of a three-node cluster (checked below).
KEYS = [f"kumomta.max_message_rate.tenant-{i}" for i in range(12)]


def config(urls: list[str]) -> RedisThrottleConfig:
    return RedisThrottleConfig.from_mapping({"node": urls, "connect_timeout": "2s"})


@pytest.fixture
async def two_nodes(redis_cluster: RedisCluster) -> AsyncIterator[list[RedisThrottles]]:
    nodes = [RedisThrottles(config(redis_cluster.urls), retry_every=0.2) for _ in range(2)]
    for node in nodes:
        assert await node.connect()
    yield nodes
    for node in nodes:
        await node.close()


@pytest.fixture
async def raw(redis_cluster: RedisCluster) -> AsyncIterator[ClusterClient]:
    client = ClusterClient.from_url(redis_cluster.urls[0])
    await client.initialize()  # learn the slots
    yield client
    await client.aclose()


def test_several_nodes_make_a_cluster_client(redis_cluster: RedisCluster) -> None:
    assert config(redis_cluster.urls).is_cluster


async def test_the_keys_live_on_every_node(raw: ClusterClient) -> None:
    """What the tests below rely on: their keys' slots are spread over the three nodes."""
    owners = [raw.get_node_from_key(key) for key in KEYS]
    assert len({node.name for node in owners if node is not None}) == 3, owners


async def test_two_nodes_share_each_throttle_whichever_node_holds_it(
    two_nodes: list[RedisThrottles], raw: ClusterClient
) -> None:
    rate = ThrottleSpec.parse("t", "5/min")
    for key in KEYS:
        results = []
        for i in range(8):  # alternately from each kumoq node
            got = await two_nodes[i % 2].check_async(key, rate, 0.0)
            assert got is not None, "the cluster did not answer"
            results.append(got.throttled)
        assert results == [False] * 5 + [True] * 3, key
        assert await raw.exists(throttle_key(key, rate)) == 1


async def test_a_connection_limit_holds_across_two_nodes_on_a_cluster(
    two_nodes: list[RedisThrottles], raw: ClusterClient
) -> None:
    limit = LimitSpec(4)
    for key in KEYS[:3]:
        held = [await two_nodes[i % 2].acquire_async(key, limit, 60) for i in range(4)]
        assert all(isinstance(lease, RedisLease) for lease in held)
        for node in two_nodes:
            refused = await node.acquire_async(key, limit, 60)
            assert isinstance(refused, Refused)
            assert refused.retry_after is not None
        assert await raw.zcard(key) == 4
        first = held[0]
        assert isinstance(first, RedisLease)
        assert await two_nodes[1].extend_async(key, first, 120) is True
        await two_nodes[1].release_async(key, first)  # released by the other node
        assert await raw.zcard(key) == 3
        assert isinstance(await two_nodes[0].acquire_async(key, limit, 60), RedisLease)


async def test_a_cluster_that_stops_answering_falls_back_to_the_process(
    redis_cluster: RedisCluster, two_nodes: list[RedisThrottles]
) -> None:
    rate = ThrottleSpec.parse("t", "2/h")
    node = two_nodes[0]
    assert await node.check_async(KEYS[0], rate, 0.0) is not None
    redis_cluster.stop()
    assert await node.check_async(KEYS[0], rate, 0.0) is None  # the caller decides locally
    assert await node.acquire_async(KEYS[0], LimitSpec(1), 30) is None
    assert not node.connected
