"""The ``kumoq-inject-<kind>`` bench case, run for real at a tiny size (issue 13).

``kumoq serve`` under bench/policies/inject.lua, its HTTP port read from stderr, loaded by
``kumoq traffic-gen --http`` and counted in the maildir, as ``make bench --with-inject`` runs
it. Asserts what was delivered and measured, never how fast.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.e2e import Load
from bench.inject import run_inject_case

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_small_inject_run_delivers_every_message(tmp_path: Path) -> None:
    load = Load(n=30, conc=3, size=1024, timeout=90.0)
    result = run_inject_case(
        "kumoq-inject-LocalDisk", "LocalDisk", load, batch=7, root=str(tmp_path)
    )
    assert result.status == "ok", result.result_line()
    assert (result.accepted, result.delivered) == (30, 30)
    assert result.e2e_s is not None
    assert result.source_cpu_s > 0  # traffic-gen's rusage, reaped with wait4
    assert result.mta_cpu_s > 0
    (run_dir,) = tmp_path.iterdir()
    assert len(list((run_dir / "var" / "maildir" / "new").iterdir())) == 30
