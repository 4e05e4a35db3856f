"""kumoq.logs: per-message log records (KumoMTA's ``JsonLogRecord``) and local log files.

- ``records``: the pure record builder (``build_record``, ``RecordType``, ``Response``).
- ``classify``: the pure bounce classifier (``kumo.configure_bounce_classifier``'s rules).
- ``writer``: ``LocalLogWriter``, one per ``kumo.configure_local_logs`` call.
- ``tail``: reading segments back (``kumoq tail``, ``read_all_records``).

Import the submodules directly; this package module imports nothing, so the pure ``records``
module does not drag in threads or zstandard.
"""
