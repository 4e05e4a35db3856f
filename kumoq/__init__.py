"""kumoq: a mail transfer agent engine whose behaviour is written in Lua (KumoMTA's policy API)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
