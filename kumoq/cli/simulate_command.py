"""``kumoq simulate``: forecast what a policy does to a campaign, on virtual time.

Runs the scenario (kumoq.simulate) under the policy and prints the forecast: a summary and
tables, or ``--json``; ``--report FILE`` also writes it as a self-contained HTML page.

Exit status: 0 the simulation ran (whatever it forecast); 1 the policy failed to load or run;
2 a usage error (no policy, a scenario that does not parse).

kumoq.simulate is imported only when the command runs, so the other commands start fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]

EXIT_POLICY = 1
EXIT_USAGE = 2


def _simulate(args: argparse.Namespace) -> int:
    from kumoq.cli.daemon_commands import setup_diagnostics
    from kumoq.errors import ConfigError, KumoqError
    from kumoq.simulate.engine import simulate
    from kumoq.simulate.report import format_text, write_html
    from kumoq.simulate.scenario import load_scenario

    # kumoq's info lines (queues reaped, sessions closed) over days of virtual time would bury
    # the forecast: the default level, info, counts as warning here.
    setup_diagnostics(args.diag_format, "warning" if args.diag_level == "info" else args.diag_level)
    try:
        scenario = load_scenario(args.scenario)
    except ConfigError as exc:
        print(f"kumoq simulate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    policy: Path | None = args.policy or scenario.policy
    if policy is None:
        print("kumoq simulate: no policy: give --policy, or 'policy' in the scenario",
              file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    try:
        forecast = simulate(scenario, policy)
    except KumoqError as exc:
        print(f"kumoq simulate: {exc}", file=sys.stderr)
        return EXIT_POLICY
    if args.report is not None:
        write_html(forecast, args.report)
    try:
        print(json.dumps(forecast, indent=2) if args.json else format_text(forecast), flush=True)
    except BrokenPipeError:  # `kumoq simulate ... | head`
        sys.stderr.close()
    return 0


def register(sub: Any) -> None:
    """Add ``simulate`` to the subcommands ``sub``."""
    cmd = sub.add_parser(
        "simulate",
        help="forecast a campaign under a policy: kumoq's scheduler and egress on virtual "
        "time against simulated destinations",
    )
    cmd.add_argument("--policy", type=Path, metavar="FILE",
                     help="the policy (default: the scenario's 'policy')")  # fmt: skip
    cmd.add_argument("--scenario", type=Path, required=True, metavar="FILE",
                     help="the scenario, TOML (docs/testing.md, 'What-if simulator')")  # fmt: skip
    cmd.add_argument("--report", type=Path, metavar="FILE",
                     help="also write the forecast as a self-contained HTML page")  # fmt: skip
    cmd.add_argument("--json", action="store_true", help="print the forecast as JSON")
    cmd.set_defaults(local=_simulate)
