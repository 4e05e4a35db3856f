"""The virtual-time event loop for unit tests: ``run_virtual(clock, main)``.

It lives in the package (``kumoq.simulate.virtual_loop``), where the what-if simulator runs
on it too; the tests import it from here as before.
"""

from __future__ import annotations

from kumoq.simulate.virtual_loop import run_virtual

__all__ = ["run_virtual"]
