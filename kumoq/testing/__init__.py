"""Testing helpers for kumoq policies: ``KumoqDaemon`` and the ``kumoq`` pytest fixture.

Installing kumoq registers the pytest plugin (``kumoq.testing.plugin``), so an operator's test
file can use the ``kumoq`` fixture directly; see docs/testing.md.
"""

from kumoq.testing.harness import KumoqDaemon, KumoqStartError

__all__ = ["KumoqDaemon", "KumoqStartError"]
