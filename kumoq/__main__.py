"""``python -m kumoq``: the command line."""

from kumoq.cli import main

raise SystemExit(main())
