"""Free-space floors of a spool (``min_free_space``, ``min_free_inodes``; reference §7).

KumoMTA refuses new messages (SMTP and HTTP injection) and reports ``storage is too full``
on ``/api/check-liveness/v1`` while a spool's filesystem is below either floor; the daemon
calls ``check_free_space`` periodically and before accepting. One ``statvfs`` per
definition, run in a worker thread.

Imports kumoq.config.spool only.
"""

from __future__ import annotations

import asyncio
import os

from kumoq.config.spool import SpoolDefinition

__all__ = ["check_free_space", "free_space_problem"]


def free_space_problem(definition: SpoolDefinition) -> str | None:
    """Blocking: why ``definition``'s filesystem is too full, or None when it is fine.

    A path that does not exist yet is checked at its nearest existing parent. Filesystems
    that report no inode count (``f_files == 0``) have no inode floor.
    """
    path = os.path.abspath(definition.path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    st = os.statvfs(path)
    total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    floor = definition.min_free_space.floor(total)
    if free < floor:
        return (
            f"storage is too full: spool {definition.name!r} ({definition.path}) has "
            f"{free} bytes free, below min_free_space={definition.min_free_space} ({floor})"
        )
    if st.f_files:
        floor = definition.min_free_inodes.floor(st.f_files)
        if st.f_favail < floor:
            return (
                f"storage is too full: spool {definition.name!r} ({definition.path}) has "
                f"{st.f_favail} inodes free, below min_free_inodes="
                f"{definition.min_free_inodes} ({floor})"
            )
    return None


async def check_free_space(*definitions: SpoolDefinition) -> str | None:
    """The first floor that is crossed among ``definitions``, or None; never blocks the loop."""

    def check() -> str | None:
        for definition in definitions:
            problem = free_space_problem(definition)
            if problem is not None:
                return problem
        return None

    return await asyncio.to_thread(check)
