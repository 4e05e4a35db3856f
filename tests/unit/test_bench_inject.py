"""``make bench --with-inject``: the ``kumoq-inject-<kind>`` case is wired (issue 13).

Only the wiring: the options, the case list, the policy and the Makefile. A real run of the
case (daemon, HTTP listener, traffic-gen) is in tests/integration/test_bench_inject_case.py;
nothing here times anything.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.e2e import POLICIES
from bench.inject import DEFAULT_BATCH, INJECT_POLICY
from bench.run import kumoq_cases, parse_args

ROOT = Path(__file__).resolve().parents[2]
KINDS = ["SQLite", "LocalDisk", "RocksDB"]


@pytest.fixture(autouse=True)
def _no_bench_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WITH_INJECT", "BATCH", "N", "CONC", "SIZE", "REPEAT", "SPOOL"):
        monkeypatch.delenv(name, raising=False)


def names(argv: list[str], kinds: list[str] = KINDS) -> list[str]:
    return [case.name for case in kumoq_cases(parse_args(argv), kinds)]


def test_with_inject_adds_one_inject_case_per_spool_kind() -> None:
    args = parse_args(["--with-inject", "--n", "2000", "--repeat", "1", "--no-netns"])
    assert args.with_inject
    assert args.batch == DEFAULT_BATCH
    got = names(["--with-inject"])
    assert [n for n in got if n.startswith("kumoq-inject-")] == [
        f"kumoq-inject-{kind}" for kind in KINDS
    ]
    # the smtp-source cases are all still there
    without = names([])
    assert [n for n in got if not n.startswith("kumoq-inject-")] == without
    assert not any(n.startswith("kumoq-inject-") for n in without)


def test_with_inject_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WITH_INJECT", "1")
    monkeypatch.setenv("BATCH", "25")
    args = parse_args([])
    assert args.with_inject
    assert args.batch == 25
    assert "kumoq-inject-RocksDB" in names([], ["RocksDB"])
    monkeypatch.setenv("WITH_INJECT", "0")
    assert "kumoq-inject-RocksDB" not in names([], ["RocksDB"])


def test_only_inject_runs_the_inject_case_alone() -> None:
    assert names(["--only", "inject"], ["RocksDB"]) == ["kumoq-inject-RocksDB"]
    assert names(["--only", "e2e", "--with-inject"], ["RocksDB"]) == ["kumoq-e2e-RocksDB"]
    assert names(["--no-kumoq", "--with-inject"], ["RocksDB"]) == []


def test_the_inject_policy_adds_an_http_listener_to_bench_init() -> None:
    policy = (POLICIES / f"{INJECT_POLICY}.lua").read_text()
    assert "require 'bench_init'" in policy
    assert "kumo.start_http_listener" in policy
    assert "maildir_path = './var/maildir'" in policy


def test_make_bench_passes_with_inject() -> None:
    lines = [
        line
        for line in (ROOT / "Makefile").read_text().splitlines()
        if "-m bench.run" in line and not line.lstrip().startswith("#")
    ]
    assert len(lines) == 2
    assert all("--with-inject" in line for line in lines)
