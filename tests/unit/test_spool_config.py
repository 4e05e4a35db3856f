"""kumo.define_spool parsing (kumoq.config.spool)."""

from __future__ import annotations

from typing import Any

import pytest

from kumoq.config.spool import MinFree, SpoolDefinition, SpoolKind, check_spool_pair
from kumoq.errors import ConfigError


def test_defaults_flush_true_localdisk_ten_percent() -> None:
    spool = SpoolDefinition.from_mapping({"name": "data", "path": "/var/spool/kumo/data"})
    assert spool.name == "data"
    assert spool.path == "/var/spool/kumo/data"
    assert spool.kind is SpoolKind.LOCAL_DISK
    assert spool.flush is True  # kumoq deviation: KumoMTA defaults to false
    assert spool.min_free_space == MinFree(percent=10.0)
    assert spool.min_free_inodes == MinFree(percent=10.0)
    assert spool.rocks_params is None


def test_all_keys() -> None:
    spool = SpoolDefinition.from_mapping(
        {
            "name": "meta",
            "path": "/s/meta",
            "kind": "SQLite",
            "flush": False,
            "min_free_space": "20 GiB",
            "min_free_inodes": 5000,
            "rocks_params": {"increase_parallelism": 4},
        }
    )
    assert spool.kind is SpoolKind.SQLITE
    assert spool.flush is False
    assert spool.min_free_space == MinFree(amount=20 * 1024**3)
    assert spool.min_free_inodes == MinFree(amount=5000)
    assert spool.rocks_params == {"increase_parallelism": 4}


@pytest.mark.parametrize("missing", ["name", "path"])
def test_name_and_path_are_required(missing: str) -> None:
    table = {"name": "data", "path": "/p"}
    del table[missing]
    with pytest.raises(ConfigError, match=f"missing required key '{missing}'"):
        SpoolDefinition.from_mapping(table)


def test_empty_path_rejected() -> None:
    with pytest.raises(ConfigError, match="path: must not be empty"):
        SpoolDefinition.from_mapping({"name": "data", "path": "  "})


def test_rocksdb_is_rejected_clearly() -> None:
    with pytest.raises(ConfigError) as info:
        SpoolDefinition.from_mapping({"name": "data", "path": "/p", "kind": "RocksDB"})
    assert "kumoq supports 'LocalDisk' and 'SQLite'" in str(info.value)


def test_unknown_kind_and_unknown_key() -> None:
    with pytest.raises(ConfigError, match="invalid spool kind 'Sled'"):
        SpoolDefinition.from_mapping({"name": "data", "path": "/p", "kind": "Sled"})
    with pytest.raises(ConfigError, match="unknown key 'flsh'"):
        SpoolDefinition.from_mapping({"name": "data", "path": "/p", "flsh": True})


@pytest.mark.parametrize(
    ("value", "expected"),
    [("5%", MinFree(percent=5.0)), (" 12.5 % ", MinFree(percent=12.5)), ("0%", MinFree(percent=0))],
)
def test_min_free_percentages(value: Any, expected: MinFree) -> None:
    spool = SpoolDefinition.from_mapping({"name": "d", "path": "/p", "min_free_space": value})
    assert spool.min_free_space == expected


@pytest.mark.parametrize("value", ["101%", "-1%", "x%", "lots", True])
def test_min_free_bad_values(value: Any) -> None:
    with pytest.raises(ConfigError, match="min_free_space"):
        SpoolDefinition.from_mapping({"name": "d", "path": "/p", "min_free_space": value})


def test_min_free_floor() -> None:
    assert MinFree(percent=10.0).floor(1000) == 100
    assert MinFree(amount=42).floor(1000) == 42
    assert str(MinFree(percent=10.0)) == "10%"


def _def(name: str, path: str, kind: str = "LocalDisk") -> SpoolDefinition:
    return SpoolDefinition.from_mapping({"name": name, "path": path, "kind": kind})


def test_pair_checks() -> None:
    check_spool_pair(_def("data", "/s/data"), _def("meta", "/s/meta"))
    check_spool_pair(_def("data", "/s", "SQLite"), _def("meta", "/s", "SQLite"))
    with pytest.raises(ConfigError, match="both must have the same kind"):
        check_spool_pair(_def("data", "/s/data", "SQLite"), _def("meta", "/s/meta"))
    with pytest.raises(ConfigError, match="both use path"):
        check_spool_pair(_def("data", "/s/x/"), _def("meta", "/s//x"))
