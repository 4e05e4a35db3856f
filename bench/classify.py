"""The bounce classifier's cost per record: ``python -m bench.classify``.

Times ``RecordLogger.log`` of a ``Bounce`` record to one log (a writer that drops the line)
without a classifier and with one (``--rules`` rules, every response line seen before, so the
cache answers), and ``classify`` on a cache hit and on a miss (a line never seen before) with
the matching rule last. The rules are ``^``-anchored, as in KumoMTA's iana.toml. Medians of
``--repeat`` runs of ``--n`` calls, in µs per call.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import cast

from kumoq.clock import FakeClock
from kumoq.config.logs import LocalLogsConfig
from kumoq.logs.classify import BounceClassifier, ClassifierParams
from kumoq.logs.logger import RecordLogger
from kumoq.logs.records import RecordType, Response
from kumoq.logs.writer import LocalLogWriter
from kumoq.message import EnvelopeAddress, Message, new_spool_id

NOW = 1_800_000_000.0


class _DropWriter:
    def write(self, line: bytes) -> None:
        pass


def _rules(n: int) -> str:
    """``n`` rules in ``n // 4`` classes, anchored at the code like KumoMTA's iana.toml; the
    last one matches ``550 5.1.1``."""
    lines = ["[rules]"]
    per_class = 4
    for c in range(max(1, n // per_class)):
        rules = [f'"^45{i % 10} 4\\\\.{c % 8}\\\\.{i} "' for i in range(per_class)]
        lines.append(f"Class{c} = [{', '.join(rules)}]")
    lines.append('InvalidRecipient = ["^550 5\\\\.1\\\\.1 "]')
    return "\n".join(lines) + "\n"


def _time(fn: Callable[[], object], n: int, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--rules", type=int, default=40)
    args = parser.parse_args()

    msg = Message(
        id=new_spool_id(NOW),
        sender=EnvelopeAddress.parse("s@example.com"),
        recipients=[EnvelopeAddress.parse("r@example.com")],
        meta={"tenant": "acme"},
        data=b"Subject: x\r\n\r\nx\r\n",
        created=NOW - 5,
    )
    response = Response(550, (5, 1, 1), "no such user", "RCPT TO:<r@example.com>\r\n")
    config = LocalLogsConfig.from_mapping({"log_dir": "/nonexistent"})
    logs = [(cast(LocalLogWriter, _DropWriter()), config)]
    params = ClassifierParams(files=("bench.toml",))
    classifier = BounceClassifier.compile([("bench.toml", _rules(args.rules))], params)
    assert classifier.classify(response) == "InvalidRecipient"
    plain = RecordLogger(logs, "node", FakeClock(NOW))
    classified = RecordLogger(logs, "node", FakeClock(NOW), classifier)

    def log(logger: RecordLogger) -> Callable[[], None]:
        return lambda: logger.log(RecordType.Bounce, msg, response=response, site="s")

    counter = iter(range(10**9))
    line = "550 5.1.1 no such user #"

    def hit() -> object:
        return classifier.classify(response)

    def miss() -> object:
        return classifier.classify_str(f"{line}{next(counter)}")

    print(f"rules: {len(classifier)}; n={args.n}, median of {args.repeat}, µs per call")
    print(f"Bounce record, no classifier:          {_time(log(plain), args.n, args.repeat):6.2f}")
    print(
        f"Bounce record, classifier (cache hit): {_time(log(classified), args.n, args.repeat):6.2f}"
    )
    print(f"classify, cache hit:                   {_time(hit, args.n, args.repeat):6.2f}")
    print(f"classify, cache miss, last rule:       {_time(miss, args.n, args.repeat):6.2f}")


if __name__ == "__main__":
    main()
