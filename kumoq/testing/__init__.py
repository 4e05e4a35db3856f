"""Testing helpers for kumoq policies: ``KumoqDaemon`` and the ``kumoq`` pytest fixture; the
smart sink (``SmartSink``, ``SinkThread``, the ``smart_sink`` fixture) and the traffic
generator (``generate``, ``run_traffic``, the ``traffic`` fixture); the harness run
(``run_harness``, ``HarnessOptions``, ``format_text``, the ``harness`` fixture).

Installing kumoq registers the pytest plugin (``kumoq.testing.plugin``), so an operator's test
file can use the fixtures directly; see docs/testing.md. The sink and the generator are
imported on first use, so a test session that does not use them does not pay for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kumoq.testing.harness import KumoqDaemon, KumoqStartError

if TYPE_CHECKING:
    from kumoq.testing.harness_report import format_text, render_html
    from kumoq.testing.harness_run import HarnessError, HarnessOptions, HarnessResult, run_harness
    from kumoq.testing.sink import SinkOptions, SmartSink
    from kumoq.testing.sink_thread import SinkThread
    from kumoq.testing.traffic import (
        TargetUnreachable,
        TrafficOptions,
        TrafficSummary,
        generate,
        run_traffic,
    )
    from kumoq.testing.traffic_message import MessageSpec

__all__ = [
    "HarnessError",
    "HarnessOptions",
    "HarnessResult",
    "KumoqDaemon",
    "KumoqStartError",
    "MessageSpec",
    "SinkOptions",
    "SinkThread",
    "SmartSink",
    "TargetUnreachable",
    "TrafficOptions",
    "TrafficSummary",
    "format_text",
    "generate",
    "render_html",
    "run_harness",
    "run_traffic",
]

_LAZY = {
    "SinkOptions": "kumoq.testing.sink",
    "SmartSink": "kumoq.testing.sink",
    "SinkThread": "kumoq.testing.sink_thread",
    "TargetUnreachable": "kumoq.testing.traffic",
    "TrafficOptions": "kumoq.testing.traffic",
    "TrafficSummary": "kumoq.testing.traffic",
    "generate": "kumoq.testing.traffic",
    "run_traffic": "kumoq.testing.traffic",
    "MessageSpec": "kumoq.testing.traffic_message",
    "HarnessError": "kumoq.testing.harness_run",
    "HarnessOptions": "kumoq.testing.harness_run",
    "HarnessResult": "kumoq.testing.harness_run",
    "run_harness": "kumoq.testing.harness_run",
    "format_text": "kumoq.testing.harness_report",
    "render_html": "kumoq.testing.harness_report",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kumoq.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
