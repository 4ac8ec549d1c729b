"""The forms ``--redis-url`` takes, and the settings that refuse the rest at start."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.app import StartupError
from gateway.config import GatewayConfig
from gateway.state.redis_url import parse_redis_url
from tests.conftest import free_port
from tests.gateway.test_startup import failed_start


def test_single_cluster_and_sentinel_forms() -> None:
    assert parse_redis_url("redis://h:6380/2").kind == "single"
    assert parse_redis_url("unix:///run/redis.sock").kind == "single"
    cluster = parse_redis_url("redis+cluster://:pw@a:7000,b,[::1]:7002")
    assert (cluster.kind, cluster.nodes, cluster.password) == (
        "cluster", (("a", 7000), ("b", 6379), ("::1", 7002)), "pw")
    sentinel = parse_redis_url("rediss+sentinel://u:p%40ss@s1:26380,s2/mymaster?db=3")
    assert (sentinel.kind, sentinel.nodes, sentinel.service) == (
        "sentinel", (("s1", 26380), ("s2", 26379)), "mymaster")
    assert (sentinel.username, sentinel.password, sentinel.db, sentinel.tls) == (
        "u", "p@ss", 3, True)


@pytest.mark.parametrize("url", [
    "localhost:6379", "http://h", "redis+cluster://", "redis+cluster://h:0",
    "redis+cluster://h:1/3", "redis+cluster://h:x", "redis+sentinel://h:26379",
    "redis+sentinel://h/a b", "redis+sentinel://h/m?db=99", "redis+sentinel://h/m?x=1",
    "redis+cluster://" + ",".join(["h:1"] * 33),
])
def test_bad_urls_are_refused_at_start(url: str) -> None:
    with pytest.raises(ValueError, match="redis_url "):
        GatewayConfig.from_settings(redis_url=url).validate()


def test_replica_settings_are_checked() -> None:
    config = GatewayConfig.from_settings(redis_url="redis+sentinel://h/m", redis_min_replicas=1)
    assert config.validate().redis.min_replicas == 1
    cluster = GatewayConfig.from_settings(redis_url="redis+cluster://h:7000",
                                          redis_min_replicas=1)
    assert cluster.validate().redis.min_replicas == 1
    for bad in ({"redis_min_replicas": -1}, {"redis_min_replicas": 17},
                {"redis_replica_timeout_s": 0.0}):
        with pytest.raises(ValueError, match="redis_"):
            GatewayConfig.from_settings(**bad).validate()


async def test_a_sentinel_url_that_reaches_nothing_stops_the_start_plainly(
        tmp_path: Path) -> None:
    """No Sentinel answers: the start fails with the URL, its password masked."""
    port = free_port()  # nothing listens there
    url = f"redis+sentinel://:secret@127.0.0.1:{port},127.0.0.1:{port}/tus"
    config = GatewayConfig.from_env({}, data_dir=tmp_path / "d", redis_url=url)
    masked = re.escape(f"redis+sentinel://:***@127.0.0.1:{port},127.0.0.1:{port}/tus")
    await failed_start(config, StartupError, f"^cannot reach Redis at {masked}: ")


async def test_a_cluster_url_that_reaches_nothing_stops_the_start_plainly(
        tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"redis+cluster://127.0.0.1:{port}"
    config = GatewayConfig.from_env({}, data_dir=tmp_path / "d", redis_url=url)
    await failed_start(config, StartupError, f"^cannot reach Redis at {re.escape(url)}: ")
