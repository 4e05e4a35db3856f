"""Scheduled-queue structures: ``python -m bench.timeq [--n N] [--span S] [--candidates]``.

For TimerWheel (1 s and 60 s ticks), SkipList and a plain ``heapq`` baseline, each in its own
child process (so resident memory is measured cleanly):

- N deferred messages are made: a ``__slots__`` object with a 32-hex id, sender, recipient, a
  small meta dict, ``num_attempts`` and ``due`` (uniform over the next ``span`` seconds), no
  body. RSS before and after gives the bytes per message;
- insert: all N are inserted (ns per insert);
- list: the whole queue is listed in pages of 1,000 (seconds in total; not for heapq);
- pop: ``now`` advances one tick at a time (1 s; 60 s for the 60 s wheel), popping everything due,
  until the queue is empty (ns per entry popped, the per-call cost included).

Bytes per message are the RSS growth divided by N: "structure" is what inserting added,
"total" the message object plus the structure. The cyclic GC stays on, as in the daemon, unless
``--no-gc`` (which shows the structures' own cost: with a million live tuples the GC's full
collections add about a microsecond per insert).

``--candidates`` instead compares inner structures for the SkipList on the same workload
(insert and pop of N entries, bytes per entry): heapq with lazy deletion, sortedcontainers'
SortedList (when installed), a bisect list-of-lists, a linked skiplist, and the chosen
buckets-plus-heap (``kumoq.scheduler.skiplist.SkipList``).

Owns bench/timeq.py only; imports kumoq.queue.{timeq,timerwheel,skiplist} and the standard
library (sortedcontainers optionally).
"""

from __future__ import annotations

import argparse
import bisect
import datetime
import gc
import heapq
import json
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from itertools import count
from typing import Any

from kumoq.scheduler.skiplist import SkipList
from kumoq.scheduler.timeq import Items
from kumoq.scheduler.timerwheel import TimerWheel

NOW0 = 1_700_000_000.0
SEQ = 64


class Deferred:
    """A deferred message as the scheduled queue holds it: metadata only, no body."""

    __slots__ = ("due", "id", "meta", "num_attempts", "recipient", "sender")

    def __init__(self, i: int, due: float, rnd: random.Random) -> None:
        self.id = f"{rnd.getrandbits(128):032x}"
        self.sender = "bounce@example.com"
        self.recipient = f"user{i}@example.net"
        self.meta: dict[str, str] = {"tenant": "t1"}
        self.num_attempts = 1
        self.due = due


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_messages(n: int, span: float) -> list[Deferred]:
    rnd = random.Random(42)
    return [Deferred(i, NOW0 + rnd.uniform(1.0, span), rnd) for i in range(n)]


# -- the three structures under test ----------------------------------------------------------


class HeapBaseline:
    """``heapq`` of ``(due, seq, item)``: no keys, no removal, no listing; the floor."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, Any]] = []
        self.seq = count()

    def insert(self, due: float, key: str, item: Any, now: float) -> None:
        heapq.heappush(self.heap, (due, next(self.seq), item))

    def pop(self, now: float) -> list[Any]:
        heap = self.heap
        out = []
        while heap and heap[0][0] <= now:
            out.append(heapq.heappop(heap)[2])
        return out

    def __len__(self) -> int:
        return len(self.heap)


def run_case(name: str, n: int, span: float) -> dict[str, Any]:
    """One row of the main table, in this process."""
    q: Any
    step = 1.0
    if name == "wheel-1s":
        q = TimerWheel(1.0, now=NOW0)
    elif name == "wheel-60s":
        q, step = TimerWheel(60.0, now=NOW0), 60.0
    elif name == "skiplist":
        q = SkipList()
    else:
        q = HeapBaseline()
    gc.collect()
    r0 = rss()
    msgs = make_messages(n, span)
    gc.collect()
    r1 = rss()
    insert = q.insert
    t0 = time.perf_counter_ns()
    for m in msgs:
        insert(m.due, m.id, m, NOW0)
    t1 = time.perf_counter_ns()
    gc.collect()
    r2 = rss()
    list_s = None
    if hasattr(q, "page"):
        t = time.perf_counter()
        listed = sum(1 for _ in q.items(page_size=1000))
        list_s = time.perf_counter() - t
        assert listed == n
    del msgs
    popped = 0
    now = NOW0
    pop = q.pop
    t2 = time.perf_counter_ns()
    while len(q):
        now += step
        result = pop(now)
        if isinstance(result, Items):
            popped += len(result.items)
        elif isinstance(result, list):
            popped += len(result)
    t3 = time.perf_counter_ns()
    assert popped == n, popped
    return {
        "case": name,
        "insert_ns": (t1 - t0) / n,
        "pop_ns": (t3 - t2) / n,
        "list_s": list_s,
        "msg_bytes": (r1 - r0) / n,
        "struct_bytes": (r2 - r1) / n,
    }


# -- SkipList inner-structure candidates -------------------------------------------------------


class CandHeapLazy:
    """heapq of (order, due, key, item) + key dict; removal would be lazy."""

    def __init__(self) -> None:
        self.h: list[tuple[int, float, str, Any]] = []
        self.d: dict[str, tuple[int, float, str, Any]] = {}
        self.seq = count()

    def insert(self, due: float, key: str, item: Any) -> None:
        e = ((math.ceil(due) << SEQ) | next(self.seq), due, key, item)
        heapq.heappush(self.h, e)
        self.d[key] = e

    def pop(self, now: float) -> int:
        lim = (math.floor(now) + 1) << SEQ
        h, d, n = self.h, self.d, 0
        while h and h[0][0] < lim:
            e = heapq.heappop(h)
            if d.pop(e[2], None) is e:
                n += 1
        return n


class CandSorted:
    """sortedcontainers.SortedList of (order, due, key, item) + key dict."""

    def __init__(self) -> None:
        from sortedcontainers import SortedList  # type: ignore[import-untyped,import-not-found,unused-ignore]

        self.sl = SortedList()
        self.d: dict[str, tuple[int, float, str, Any]] = {}
        self.seq = count()

    def insert(self, due: float, key: str, item: Any) -> None:
        e = ((math.ceil(due) << SEQ) | next(self.seq), due, key, item)
        self.sl.add(e)
        self.d[key] = e

    def pop(self, now: float) -> int:
        lim = (math.floor(now) + 1) << SEQ
        i = self.sl.bisect_left((lim,))
        if not i:
            return 0
        got = self.sl[:i]
        del self.sl[:i]
        for e in got:
            del self.d[e[2]]
        return len(got)


class CandListOfLists:
    """Own bisect list-of-lists (sortedcontainers' idea, load 1000) + key dict."""

    LOAD = 1000

    def __init__(self) -> None:
        self.lists: list[list[tuple[int, float, str, Any]]] = []
        self.maxes: list[int] = []
        self.d: dict[str, tuple[int, float, str, Any]] = {}
        self.seq = count()

    def insert(self, due: float, key: str, item: Any) -> None:
        o = (math.ceil(due) << SEQ) | next(self.seq)
        e = (o, due, key, item)
        self.d[key] = e
        maxes, lists = self.maxes, self.lists
        if not maxes:
            lists.append([e])
            maxes.append(o)
            return
        i = bisect.bisect_left(maxes, o)
        if i == len(maxes):
            i -= 1
            lst = lists[i]
            lst.append(e)
            maxes[i] = o
        else:
            lst = lists[i]
            bisect.insort(lst, e)
        if len(lst) > 2 * self.LOAD:
            half = lst[self.LOAD :]
            del lst[self.LOAD :]
            maxes[i] = lst[-1][0]
            lists.insert(i + 1, half)
            maxes.insert(i + 1, half[-1][0])

    def pop(self, now: float) -> int:
        lim = (math.floor(now) + 1) << SEQ
        lists, maxes, d, n = self.lists, self.maxes, self.d, 0
        k = 0
        while k < len(maxes) and maxes[k] < lim:
            k += 1
        for lst in lists[:k]:
            for e in lst:
                del d[e[2]]
            n += len(lst)
        del lists[:k]
        del maxes[:k]
        if lists:
            lst = lists[0]
            j = bisect.bisect_left(lst, (lim,))
            for e in lst[:j]:
                del d[e[2]]
            n += j
            del lst[:j]
        return n


class _Node:
    __slots__ = ("e", "nxt")

    def __init__(self, e: Any, level: int) -> None:
        self.e = e
        self.nxt: list[_Node | None] = [None] * level


class CandLinkedSkiplist:
    """A textbook linked skiplist (p = 1/4) of (order, due, key, item) + key dict."""

    MAXL = 24

    def __init__(self) -> None:
        self.head = _Node(None, self.MAXL)
        self.level = 1
        self.d: dict[str, Any] = {}
        self.seq = count()
        self.rnd = random.Random(1).random

    def insert(self, due: float, key: str, item: Any) -> None:
        o = (math.ceil(due) << SEQ) | next(self.seq)
        e = (o, due, key, item)
        self.d[key] = e
        update: list[_Node] = [self.head] * self.MAXL
        x = self.head
        for i in range(self.level - 1, -1, -1):
            nx = x.nxt[i]
            while nx is not None and nx.e[0] < o:
                x = nx
                nx = x.nxt[i]
            update[i] = x
        level = 1
        while level < self.MAXL and self.rnd() < 0.25:
            level += 1
        self.level = max(self.level, level)
        node = _Node(e, level)
        for i in range(level):
            node.nxt[i] = update[i].nxt[i]
            update[i].nxt[i] = node

    def pop(self, now: float) -> int:
        lim = (math.floor(now) + 1) << SEQ
        head, d, n = self.head, self.d, 0
        x = head.nxt[0]
        while x is not None and x.e[0] < lim:
            del d[x.e[2]]
            n += 1
            for i in range(len(x.nxt)):
                head.nxt[i] = x.nxt[i]
            x = head.nxt[0]
        return n


class CandChosen:
    """kumoq.scheduler.skiplist.SkipList (buckets + heap)."""

    def __init__(self) -> None:
        self.q: SkipList[Any] = SkipList()

    def insert(self, due: float, key: str, item: Any) -> None:
        self.q.insert(due, key, item, NOW0)

    def pop(self, now: float) -> int:
        result = self.q.pop(now)
        return len(result.items) if isinstance(result, Items) else 0


CANDIDATES: dict[str, tuple[str, Callable[[], Any]]] = {
    "heap-lazy": ("heapq + lazy deletion", CandHeapLazy),
    "sortedlist": ("sortedcontainers SortedList", CandSorted),
    "listoflists": ("bisect list-of-lists (load 1000)", CandListOfLists),
    "linked": ("linked skiplist (p=1/4)", CandLinkedSkiplist),
    "buckets": ("**second buckets + heap (chosen)**", CandChosen),
}


def run_candidate(name: str, n: int, span: float) -> dict[str, Any]:
    msgs = make_messages(n, span)
    gc.collect()
    r0 = rss()
    q = CANDIDATES[name][1]()
    t0 = time.perf_counter_ns()
    for m in msgs:
        q.insert(m.due, m.id, m)
    t1 = time.perf_counter_ns()
    gc.collect()
    r1 = rss()
    popped = 0
    now = NOW0
    t2 = time.perf_counter_ns()
    while popped < n:
        now += 1.0
        popped += q.pop(now)
    t3 = time.perf_counter_ns()
    return {
        "case": name,
        "insert_ns": (t1 - t0) / n,
        "pop_ns": (t3 - t2) / n,
        "struct_bytes": (r1 - r0) / n,
    }


# -- driver -----------------------------------------------------------------------------------

MAIN_CASES = {
    "wheel-1s": "TimerWheel, tick 1 s",
    "wheel-60s": "TimerWheel, tick 60 s",
    "skiplist": "SkipList (1 s buckets)",
    "heapq": "heapq baseline (no keys/removal/listing)",
}


def child(kind: str, name: str, n: int, span: float, no_gc: bool) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.timeq", f"--{kind}-case", name]
    cmd += ["--n", str(n), "--span", str(span)] + (["--no-gc"] if no_gc else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def machine() -> str:
    mem = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout.splitlines()
    return (
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, nproc {os.cpu_count()}, "
        f"Python {sys.version.split()[0]}; free -h: {' '.join(mem[1].split()[:4]) if mem else '?'}"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.timeq", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="entries (default 1,000,000)")
    p.add_argument("--span", type=float, default=86400.0, help="due times spread, s (1 day)")
    p.add_argument("--candidates", action="store_true", help="compare SkipList inner structures")
    p.add_argument("--no-gc", action="store_true", help="disable the cyclic GC in the runs")
    p.add_argument("--main-case", help=argparse.SUPPRESS)
    p.add_argument("--cand-case", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.no_gc:
        gc.disable()
    if a.main_case:
        print(json.dumps(run_case(a.main_case, a.n, a.span)))
        return
    if a.cand_case:
        print(json.dumps(run_candidate(a.cand_case, a.n, a.span)))
        return
    print(f"{machine()}")
    print(
        f"{a.n:,} entries, due uniformly over {a.span:,.0f} s, inserted in random due order, "
        f"cyclic GC {'off' if a.no_gc else 'on'}\n"
    )
    if a.candidates:
        print("| SkipList inner structure | insert ns/op | pop ns/op | structure B/entry |")
        print("|---|---:|---:|---:|")
        for name, (label, _make) in CANDIDATES.items():
            try:
                r = child("cand", name, a.n, a.span, a.no_gc)
            except subprocess.CalledProcessError as exc:
                print(f"| {label} | skipped: {exc.stderr.strip().splitlines()[-1]} | | |")
                continue
            print(
                f"| {label} | {r['insert_ns']:,.0f} | {r['pop_ns']:,.0f} "
                f"| {r['struct_bytes']:,.0f} |"
            )
        return
    print(
        "| structure | insert ns/op | pop ns/op | list all, pages of 1,000 (s) "
        "| structure B/msg | total B/msg (message + structure) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, label in MAIN_CASES.items():
        r = child("main", name, a.n, a.span, a.no_gc)
        listed = "—" if r["list_s"] is None else f"{r['list_s']:.2f}"
        print(
            f"| {label} | {r['insert_ns']:,.0f} | {r['pop_ns']:,.0f} | {listed} "
            f"| {r['struct_bytes']:,.0f} | {r['msg_bytes'] + r['struct_bytes']:,.0f} |"
        )


if __name__ == "__main__":
    main()
