"""Write docs/compatibility.md: every item of KumoMTA's reference documentation (``kumo``
functions and submodules, events, ``msg:`` methods, HTTP endpoints, address fields) with its
status in kumoq: supported, partial or not yet available.

The status is found by asking kumoq itself: a real policy runtime is loaded and each function,
method and address field is looked up from Lua (``kumo`` is strict: a missing field raises, so
each lookup runs under ``pcall``); events come from ``kumoq.lua.events``, endpoints from the
routes the HTTP listener registers (``kumoq.http.openapi.OPERATIONS``, which
tests/unit/test_http_openapi.py holds equal to ``http_routes()``). ``OVERRIDES`` then marks, by
hand, what is there but partial (or a stub), each with its reason from docs/deviations.md.

The item names live in tools/kumomta_items.txt (group, name, KumoMTA doc path; tab separated),
so that no KumoMTA checkout is needed to regenerate the page. ``--refresh-items`` rebuilds that
list from a bare clone of KumoMTA (``--kumomta-git``, by default $KUMOMTA_GIT_DIR).

    .venv/bin/python -m tools.compat_inventory                  # rewrite docs/compatibility.md
    .venv/bin/python -m tools.compat_inventory --refresh-items  # then the item list first
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

ROOT: Final = Path(__file__).resolve().parent.parent
ITEMS: Final = ROOT / "tools" / "kumomta_items.txt"
PAGE: Final = ROOT / "docs" / "compatibility.md"
REFRESH: Final = ".venv/bin/python -m tools.compat_inventory"
DEFAULT_GIT: Final = "/work/.mirror/KumoCorp+kumomta/repo"
DOCS_URL: Final = "https://docs.kumomta.com/"

Group = Literal["function", "event", "method", "endpoint", "address"]
Status = Literal["supported", "partial", "not yet available"]
GROUPS: Final[dict[Group, str]] = {
    "function": "Functions",
    "event": "Events",
    "method": "Message methods",
    "endpoint": "HTTP endpoints",
    "address": "Address fields",
}
STATUSES: Final[tuple[Status, ...]] = ("supported", "partial", "not yet available")

_P: Final = "partial"
_N: Final = "not yet available"
#: Items found but not complete, or found as a stub that raises: ``group:name`` -> status, why.
OVERRIDES: Final[dict[str, tuple[Status, str]]] = {
    "function:kumo.configure_local_logs": (_P, "`filter_event` is stored, never called"),
    "function:kumo.configure_bounce_classifier": (
        _P,
        "Python `re` rules; read at start only; `pool_size`, `back_pressure` only checked",
    ),
    "function:kumo.shaping.load": (
        _P,
        "`automation` and `provider` blocks ignored with a warning; `http(s)` sources not fetched",
    ),
    "function:kumo.make_egress_path": (
        _P,
        "no SMTP AUTH, `max_recipients_per_batch` splitting, `reconnect_strategy`, "
        "`try_next_host_on_transport_error`",
    ),
    "function:kumo.make_egress_source": (
        _P,
        "proxy keys (`ha_proxy_*`, `socks5_*`) and `suspend_when_*` stored, not acted on",
    ),
    "function:kumo.make_queue_config": (_P, "`provider_name`, `shrink_policy` stored only"),
    "function:kumo.make_throttle": (
        _P,
        "no `explain`; only `sleep_if_throttled` uses redis, and waits only in awaited events",
    ),
    "function:kumo.configure_redis_throttles": (
        _P,
        "the queue's `max_message_rate` and `throttle:throttle()` stay in the process",
    ),
    "function:kumo.make_listener_domain": (
        _P,
        "`log_oob`, `log_arf` let RCPT through; reports are not parsed",
    ),
    "function:kumo.start_http_listener": (
        _P,
        "no ACLs, no bearer tokens; TLS keys from files only (no vault)",
    ),
    "function:kumo.set_diagnostic_log_filter": (_P, "span and field filters refused"),
    "function:kumo.string.eval_template": (_P, "no `Handlebars` dialect"),
    "function:kumo.time.sleep": (_P, "only in the events kumoq awaits"),
    "function:kumo.dns.lookup_mx": (_P, "no `mta_sts`; a resolver name is ignored"),
    **{
        f"function:kumo.dns.{name}": (
            _P,
            "waits only in the events kumoq awaits; no resolver names (`define_resolver`)",
        )
        for name in ("lookup_addr", "lookup_ptr", "lookup_txt")
    },
    "function:kumo.set_config_monitor_globs": (_P, "kept and evaluated; the files are not watched"),
    "event:requeue_message": (
        _P,
        "`delay` is a number of seconds; not fired for throttles or an unhealthy spool",
    ),
    "event:smtp_server_auth_plain": (
        _P,
        "`conn_meta` is a read-only table; an `AuthInfo` table is refused",
    ),
    "method:check_fix_conformance": (_P, "`detect_encoding` tries the listed encodings"),
    "method:parse_mime": (_P, "`header.authentication_results` raises"),
    "method:save": (_P, "accepted, does nothing: kumoq stores at its own points"),
    "method:set_force_sync": (_P, "not honoured under `flush = false`"),
    "method:shrink": (_P, "returns `false`: nothing is released during an event"),
    "method:shrink_data": (_P, "returns `false`: nothing is released during an event"),
    "method:dkim_verify": (_P, "waits only in the events kumoq awaits; no resolver names"),
    "function:kumo.dkim.rsa_sha256_signer": (_P, "`key`: a file or `key_data`, not Vault"),
    "function:kumo.dkim.ed25519_signer": (_P, "`key`: a file or `key_data`, not Vault"),
    "method:arc_verify": (_P, "waits only in the events kumoq awaits; no resolver names"),
    "method:arc_seal": (_P, "an `rsa_sha256_signer` only; waits only in the events kumoq awaits"),
    "function:kumo.configure_log_hook": (
        _P,
        "`per_record` templates refused; `deferred_spool` accepted, the message is always spooled",
    ),
    "function:kumo.http.build_client": (
        _P,
        "no connection pool between requests; `send()` only in the events kumoq awaits",
    ),
    "function:kumo.http.Request": (_P, "no `form_multipart_data`, no `aws_sign_v4`"),
    "endpoint:POST /api/inject/v1": (
        _P,
        "`deferred_generation` ignored; no `Handlebars` templates",
    ),
    "endpoint:POST /api/admin/suspend-ready-q/v1": (_P, "SMTP ready queues only"),
    "endpoint:POST /api/admin/bounce/v1": (_P, "sweeps the scheduled queues, not ready queues"),
}


@dataclass(frozen=True)
class Item:
    group: Group
    name: str
    doc: str  # its page in KumoMTA's repository, e.g. docs/reference/kumo/memoize.md

    @property
    def key(self) -> str:
        return f"{self.group}:{self.name}"

    @property
    def url(self) -> str:
        page = re.sub(r"(/_index)?\.md$", "/", self.doc.removeprefix("docs/"))
        return DOCS_URL + page


# -- the item list ---------------------------------------------------------------------------

_SUBMODULE_DIRS: Final = {"string": "kumo.string", "regex": "kumo.regex", "redis": "redis",
                          "sqlite": "sqlite"}  # fmt: skip


def classify(path: str) -> Item | None:
    """The item a KumoMTA docs/reference page documents, or None (parameters, indexes...)."""
    parts = path.removeprefix("docs/reference/").removesuffix(".md").split("/")
    if not path.endswith(".md") or (parts[-1] == "_index" and len(parts) != 3):
        return None
    top, rest = parts[0], parts[1:]
    if top == "kumo" and len(rest) == 1:
        return Item("function", f"kumo.{rest[0]}", path)
    if top == "kumo" and rest[1:] == ["_index"]:  # a function whose parameters have pages
        return Item("function", f"kumo.{rest[0]}", path)
    module = _SUBMODULE_DIRS.get(top, top if top.startswith("kumo.") else "")
    if module and len(rest) == 1:
        return Item("function", f"{module}.{rest[0]}", path)
    groups: dict[str, Group] = {"events": "event", "message": "method", "address": "address"}
    if top in groups and len(rest) == 1:
        return Item(groups[top], rest[0], path)
    return None


def refresh_items(git_dir: str) -> list[Item]:
    """Read the item list from a (bare) clone of KumoMTA's repository."""

    def git(*args: str) -> str:
        cmd = ["git", f"--git-dir={git_dir}", *args]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout

    items: list[Item] = []
    for path in git("ls-tree", "-r", "--name-only", "HEAD", "docs/reference/").splitlines():
        if re.fullmatch(r"docs/reference/http/kumod/[^/_][^/]*\.md", path):
            title = next(line for line in git("show", f"HEAD:{path}").splitlines()
                         if line.startswith("# "))  # fmt: skip
            items.append(Item("endpoint", title[2:].strip(" `"), path))
        elif (item := classify(path)) is not None:
            items.append(item)
    return sorted(items, key=lambda i: (list(GROUPS).index(i.group), i.name))


def read_items(path: Path = ITEMS) -> list[Item]:
    items = []
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            group, name, doc = line.split("\t")
            assert group in GROUPS, line
            items.append(Item(group, name, doc))
    return items


def write_items(items: Iterable[Item], path: Path = ITEMS) -> None:
    head = "# KumoMTA's documented API items: group, name, doc page. tools/compat_inventory.py\n"
    path.write_text(head + "".join(f"{i.group}\t{i.name}\t{i.doc}\n" for i in items))


# -- what kumoq has --------------------------------------------------------------------------

#: Object types have a page of their own; each is looked for by an expression.
TYPE_PROBES: Final = {
    "kumo.time.Time": "getmetatable(kumo.time.now()) == 'Time'",
    "kumo.time.TimeDelta": "getmetatable(kumo.time.parse_duration('1s')) == 'TimeDelta'",
    "kumo.http.Request": "tostring(kumo.http.build_client({}):get('http://x/')) == "
    "'kumo.http Request'",
    "kumo.http.Response": "type(kumo.http.build_client({}).get) == 'function'",
}

_PROBE: Final = """
local TYPES = {%s}
local function lookup(path)
  if TYPES[path] then return TYPES[path]() or nil end
  local v
  for part in path:gmatch('[^.]+') do
    if v == nil then v = part == 'kumo' and kumo or require(part) else v = v[part] end
    if v == nil then error('nil') end
  end
  return v
end
local function found(names, get)
  local out = {}
  for _, name in ipairs(names) do
    local ok, v = pcall(get, name)
    if ok and v ~= nil then out[#out + 1] = name end
  end
  return out
end
local FUNCTIONS = found({%s}, lookup)
kumo.on('kumoq.probe', function(msg, addr)
  return {
    FUNCTIONS,
    found({%s}, function(n) return type(msg[n]) == 'function' or nil end),
    found({%s}, function(n) return addr[n] end),
  }
end)
"""


def _lua_list(names: Iterable[str]) -> str:
    for name in names:
        assert re.fullmatch(r"[A-Za-z0-9_.]+", name), name
    return ", ".join(f"'{n}'" for n in names)


def present(items: Sequence[Item]) -> set[str]:
    """The keys (``group:name``) of the items kumoq has."""
    from kumoq.http.openapi import OPERATIONS
    from kumoq.lua import PolicyEvents, PolicyRuntime
    from kumoq.lua.events import FIRED_EVENTS
    from kumoq.message import EnvelopeAddress, Message, new_spool_id

    by_group = {g: [i.name for i in items if i.group == g] for g in GROUPS}
    types = ", ".join(f"['{k}'] = function() return {v} end" for k, v in TYPE_PROBES.items())
    lists = tuple(_lua_list(by_group[g]) for g in ("function", "method", "address"))
    src = _PROBE % (types, *lists)
    msg = Message(id=new_spool_id(0.0), sender=EnvelopeAddress.parse("a@example.com"),
                  recipients=[EnvelopeAddress.parse("b@example.com")], meta={},
                  data=b"Subject: probe\r\n\r\nprobe\r\n")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "init.lua").write_text(src)
        rt = PolicyRuntime(Path(tmp) / "init.lua")
        functions, methods, fields = PolicyEvents(rt).call("kumoq.probe", msg, msg.sender)
    routes = {f"{op.method} {op.path}" for op in OPERATIONS}
    return (
        {f"function:{n}" for n in functions}
        | {f"method:{n}" for n in methods}
        | {f"address:{n}" for n in fields}
        | {f"event:{n}" for n in by_group["event"] if n in FIRED_EVENTS}
        | {f"endpoint:{n}" for n in by_group["endpoint"] if n in routes}
    )


def statuses(items: Sequence[Item]) -> dict[str, tuple[Status, str]]:
    """Each item's status and note: found or not, then ``OVERRIDES``."""
    from kumoq.lua.events import NOT_FIRED_YET

    found = present(items)
    out: dict[str, tuple[Status, str]] = {}
    for item in items:
        notes = {"event": NOT_FIRED_YET.get(item.name, ""), "endpoint": "not served (`404`)"}
        status: Status = "supported" if item.key in found else "not yet available"
        note = "" if status == "supported" else notes.get(item.group, "")
        out[item.key] = OVERRIDES.get(item.key, (status, note)) if status != _N else (_N, note)
    return out


# -- the page --------------------------------------------------------------------------------


def _counts(keys: Iterable[str], status: dict[str, tuple[Status, str]]) -> str:
    n = Counter(status[k][0] for k in keys)
    return ", ".join(f"{n[s]} {s}" for s in STATUSES)


def _module(item: Item) -> str:
    return item.name.rsplit(".", 1)[0] if item.group == "function" else ""


def render(items: Sequence[Item], status: dict[str, tuple[Status, str]]) -> str:
    lines = [
        "# KumoMTA compatibility",
        "",
        "Every function, event, message method, HTTP endpoint and address field that KumoMTA's",
        "reference documentation describes, item by item, with its status in kumoq:",
        "**supported**, **partial** (there, with the limit given; see",
        "[Deviations from KumoMTA](deviations.md)) or **not yet available** (a policy that",
        "reads a missing `kumo.*` function gets an error naming it; a handler for an event",
        "kumoq does not fire is reported at load).",
        "",
        "This page is generated by `tools/compat_inventory.py`, which asks a kumoq policy runtime",
        "what it has; do not edit it by hand. To refresh it, run",
        f"`{REFRESH}`.",
        "",
        "| group | supported | partial | not yet available | items |",
        "|---|---|---|---|---|",
    ]
    sections: list[str] = []
    for group, title in GROUPS.items():
        mine = [i for i in items if i.group == group]
        n = Counter(status[i.key][0] for i in mine)
        lines.append(f"| [{title}](#{title.lower().replace(' ', '-')}) | "
                     + " | ".join(str(n[s]) for s in STATUSES) + f" | {len(mine)} |")  # fmt: skip
        sections += ["", f"## {title}", "", _counts((i.key for i in mine), status) + "."]
        for module in dict.fromkeys(_module(i) for i in mine):
            rows = [i for i in mine if _module(i) == module]
            if module:
                sections += ["", f"### `{module}`", "", _counts((i.key for i in rows), status)]
            sections += ["", "| item | status | note |", "|---|---|---|"]
            for i in rows:
                st, note = status[i.key]
                label = f"**{st}**" if st == "supported" else st
                sections.append(f"| [`{i.name}`]({i.url}) | {label} | {note} |")
    total = Counter(s for s, _ in status.values())
    summary = ", ".join(f"{total[s]} {s}" for s in STATUSES)
    return "\n".join([*lines, "", f"In all {len(items)} items: {summary}.", *sections, ""])


def generate() -> str:
    items = read_items()
    return render(items, statuses(items))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--refresh-items", action="store_true",
                    help="rebuild tools/kumomta_items.txt from a KumoMTA clone first")  # fmt: skip
    ap.add_argument("--kumomta-git", default=os.environ.get("KUMOMTA_GIT_DIR", DEFAULT_GIT),
                    help="KumoMTA's git directory (a bare clone will do)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.refresh_items:
        if not Path(args.kumomta_git).exists():
            print(f"no KumoMTA clone at {args.kumomta_git}", file=sys.stderr)
            return 2
        write_items(refresh_items(args.kumomta_git))
    PAGE.write_text(generate())
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
