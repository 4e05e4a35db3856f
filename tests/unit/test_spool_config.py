"""kumo.define_spool parsing (kumoq.config.spool)."""

from __future__ import annotations

from typing import Any

import pytest

from kumoq.config.spool import (
    UNSUPPORTED_ROCKS_PARAMS,
    MinFree,
    RocksParams,
    SpoolDefinition,
    SpoolKind,
    check_spool_pair,
)
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
    assert spool.rocks_params == RocksParams(increase_parallelism=4)


@pytest.mark.parametrize("missing", ["name", "path"])
def test_name_and_path_are_required(missing: str) -> None:
    table = {"name": "data", "path": "/p"}
    del table[missing]
    with pytest.raises(ConfigError, match=f"missing required key '{missing}'"):
        SpoolDefinition.from_mapping(table)


def test_empty_path_rejected() -> None:
    with pytest.raises(ConfigError, match="path: must not be empty"):
        SpoolDefinition.from_mapping({"name": "data", "path": "  "})


def test_rocksdb_kind_and_every_rocks_param_kumoq_honours() -> None:
    spool = SpoolDefinition.from_mapping(
        {
            "name": "data",
            "path": "/p",
            "kind": "RocksDB",
            "rocks_params": {
                "increase_parallelism": 2.0,  # a Lua number
                "optimize_level_style_compaction": "64 MiB",
                "paranoid_checks": True,
                "compression_type": "Zstd",
                "compaction_readahead_size": 2 * 1024 * 1024,
                "level_compaction_dynamic_level_bytes": True,
                "max_open_files": 1000,
                "write_buffer_size": "1 MiB",
                "level0_stop_writes_trigger": 12,
                "memtable_huge_page_size": 2 * 1024 * 1024,
                "log_file_time_to_roll": "24 hours",
                "obsolete_files_period": "6h",
                "limit_concurrent_stores": 4,
                "limit_concurrent_loads": 4,
                "limit_concurrent_removes": 4,
                "store_deadline": "30s",
            },
        }
    )
    assert spool.kind is SpoolKind.ROCKSDB
    assert spool.rocks_params == RocksParams(
        increase_parallelism=2,
        optimize_level_style_compaction=64 * 1024 * 1024,
        paranoid_checks=True,
        compression_type="Zstd",
        compaction_readahead_size=2 * 1024 * 1024,
        level_compaction_dynamic_level_bytes=True,
        max_open_files=1000,
        write_buffer_size=1024 * 1024,
        level0_stop_writes_trigger=12,
        memtable_huge_page_size=2 * 1024 * 1024,
        log_file_time_to_roll=86400.0,
        obsolete_files_period=21600.0,
        limit_concurrent_stores=4,
        limit_concurrent_loads=4,
        limit_concurrent_removes=4,
        store_deadline=30.0,
    )


@pytest.mark.parametrize("key", sorted(UNSUPPORTED_ROCKS_PARAMS))
def test_rocks_params_kumoq_cannot_honour_are_refused_for_rocksdb(key: str) -> None:
    value = {"log_level": "Warn", "allow_error_unlatch": False}.get(key, "15s")
    table = {"name": "data", "path": "/p", "rocks_params": {key: value}}
    with pytest.raises(ConfigError) as info:
        SpoolDefinition.from_mapping({**table, "kind": "RocksDB"})
    text = str(info.value)
    assert text.startswith(f"rocks_params: {key!r} is not supported by kumoq (")
    assert "supported keys are: compaction_readahead_size, compression_type," in text
    # Another kind ignores rocks_params, as KumoMTA does: the policy still loads.
    assert SpoolDefinition.from_mapping(table).rocks_params == RocksParams(unsupported=(key,))


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"write_bufer_size": 1}, "rocks_params: unknown key 'write_bufer_size'; allowed keys"),
        ({"compression_type": "Brotli"}, "rocks_params.compression_type: invalid compression"),
        ({"increase_parallelism": 0}, "rocks_params.increase_parallelism: must be at least 1"),
        ({"store_deadline": "soon"}, "rocks_params.store_deadline: invalid duration"),
        ({"write_buffer_size": "lots"}, "rocks_params.write_buffer_size: invalid size"),
        (
            {"optimize_level_style_compaction": 1, "optimize_universal_style_compaction": 1},
            "cannot both be set",
        ),
        ("fast", "rocks_params: expected a table"),
    ],
)
def test_bad_rocks_params(params: Any, error: str) -> None:
    for kind in ("RocksDB", "LocalDisk"):  # checked for every kind, as KumoMTA does
        with pytest.raises(ConfigError, match=error):
            SpoolDefinition.from_mapping(
                {"name": "data", "path": "/p", "kind": kind, "rocks_params": params}
            )


def test_unknown_kind_and_unknown_key() -> None:
    with pytest.raises(
        ConfigError, match="invalid spool kind 'Sled'; expected 'LocalDisk', 'Rocks"
    ):
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
    check_spool_pair(_def("data", "/s", "RocksDB"), _def("meta", "/s", "RocksDB"))
    with pytest.raises(ConfigError, match="both must have the same kind"):
        check_spool_pair(_def("data", "/s/data", "SQLite"), _def("meta", "/s/meta"))
    with pytest.raises(ConfigError, match="both use path"):
        check_spool_pair(_def("data", "/s/x/"), _def("meta", "/s//x"))
