"""Shaping files merged as KumoMTA's ``kumo.shaping.load`` merges them (``shaping.rs``).

A shaping file is a table keyed by destination domain. ``default`` holds the values every
domain starts from; any other key is a domain whose table holds ``kumo.make_egress_path`` keys
plus four of its own:

- ``mx_rollup`` (default true): the entry applies to the *site* the domain's MX hosts make
  (every domain hosted there shares it), not to the domain itself;
- ``replace_base``: this entry replaces what earlier files said for the same domain (or site)
  instead of merging into it;
- ``sources = { name = {...} }``: overrides for one egress source;
- ``automation``: Traffic Shaping Automation rules, read by KumoMTA's ``tsa-daemon``. kumoq has
  no TSA: the rules are accepted (they must be a list of tables) and ignored, with a warning.

A ``provider`` table (KumoMTA's provider blocks, matched by MX suffix at delivery time) is
accepted and ignored with a warning too.

Files merge in order. ``get_egress_path_config(domain, source, site)`` layers, lowest first:
``default``, the site entry, the domain entry, the site's source override, the domain's source
override. An entry whose ``replace_base`` is set discards what is below it (as in KumoMTA, an
entry keeps the ``replace_base`` of the first file that named it). Values replace each other
key by key, except the ``additional_*`` throttle tables, whose keys merge.

Every entry is checked with ``EgressPathConfig.from_mapping`` as it is read, so an error names
the file, the domain (and source) and the key. DNS is the caller's: ``rollup_domains`` lists the
domains whose site is needed, and ``merge`` takes the answers (a site name, ``""`` for a null
MX, or a ``DnsFailure``).

Pure: imports only the standard library, kumoq.errors and kumoq.config.egress.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from kumoq.config.egress import EgressPathConfig
from kumoq.errors import ConfigError

__all__ = [
    "CheckLevel",
    "DnsFailure",
    "Entry",
    "Shaping",
    "ShapingFile",
    "ShapingOptions",
    "merge",
    "parse_file",
    "rollup_domains",
]

_PATH_KEYS: Final = frozenset(f.name for f in dataclasses.fields(EgressPathConfig))
_ENTRY_KEYS: Final = frozenset({"mx_rollup", "replace_base", "sources", "automation"})
_MERGEABLE: Final = frozenset(
    {
        "additional_connection_limits",
        "additional_message_rate_throttles",
        "additional_source_selection_rates",
    }
)


class CheckLevel(StrEnum):
    """How a condition found while loading is reported."""

    IGNORE = "Ignore"
    WARN = "Warn"
    ERROR = "Error"

    @classmethod
    def parse(cls, key: str, value: Any) -> CheckLevel:
        if isinstance(value, str):
            for level in cls:
                if level.value.lower() == value.lower():
                    return level
        raise ConfigError(
            f"kumo.shaping.load: options.{key}: expected one of 'Ignore', 'Warn' or 'Error', "
            f"got {value!r}"
        )


@dataclass(frozen=True, slots=True)
class ShapingOptions:
    """``kumo.shaping.load``'s second argument (KumoMTA's ``ShapingMergeOptions``)."""

    provider_overlap: CheckLevel = CheckLevel.IGNORE
    dns_fail: CheckLevel = CheckLevel.IGNORE
    null_mx: CheckLevel = CheckLevel.IGNORE
    aliased_site: CheckLevel = CheckLevel.IGNORE
    skip_remote: bool = False
    remote_load: CheckLevel = CheckLevel.IGNORE
    local_load: CheckLevel = CheckLevel.ERROR
    http_timeout: str | None = None

    @classmethod
    def from_mapping(cls, mapping: Any) -> ShapingOptions:
        if mapping is None:
            return cls()
        if not isinstance(mapping, Mapping):
            raise ConfigError(f"kumo.shaping.load: options must be a table, got {mapping!r}")
        kwargs: dict[str, Any] = {}
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in mapping.items():
            if key not in names:
                raise ConfigError(
                    f"kumo.shaping.load: options: unknown key {key!r}; allowed keys are: "
                    + ", ".join(sorted(names))
                )
            if key == "skip_remote":
                if not isinstance(value, bool):
                    raise ConfigError(f"kumo.shaping.load: options.{key}: expected a boolean")
                kwargs[key] = value
            elif key == "http_timeout":
                if not isinstance(value, str):
                    raise ConfigError(f"kumo.shaping.load: options.{key}: expected a duration")
                kwargs[key] = value
            else:
                kwargs[key] = CheckLevel.parse(key, value)
        return cls(**kwargs)


@dataclass(frozen=True, slots=True)
class DnsFailure:
    """The MX lookup for a rolled-up domain failed; ``text`` says why."""

    text: str


@dataclass(slots=True)
class Entry:
    """One domain's (or site's, or ``default``'s) section: KumoMTA's ``PartialEntry``."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    mx_rollup: bool = True
    replace_base: bool = False
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)

    def merge_from(self, other: Entry) -> None:
        if other.replace_base:
            self.params = dict(other.params)
            self.sources = {k: dict(v) for k, v in other.sources.items()}
            return
        _merge_table(self.params, other.params)
        for source, table in other.sources.items():
            existing = self.sources.get(source)
            if existing is None:
                self.sources[source] = dict(table)
            else:
                _merge_table(existing, table)

    def copy(self) -> Entry:
        return Entry(
            self.name,
            dict(self.params),
            self.mx_rollup,
            self.replace_base,
            {k: dict(v) for k, v in self.sources.items()},
        )


def _merge_table(target: dict[str, Any], source: Mapping[str, Any]) -> None:
    for key, value in source.items():
        existing = target.get(key)
        if key in _MERGEABLE and isinstance(existing, Mapping) and isinstance(value, Mapping):
            target[key] = {**existing, **value}
        else:
            target[key] = value


@dataclass(slots=True)
class ShapingFile:
    """One file, checked: its ``default`` entry, its domain entries in order, its warnings."""

    name: str
    default: Entry | None = None
    domains: dict[str, Entry] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _check_params(where: str, table: Mapping[str, Any]) -> None:
    unknown = sorted(str(k) for k in table if k not in _PATH_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (not a make_egress_path key)")
    try:
        EgressPathConfig.from_mapping(table)
    except ConfigError as e:
        raise ConfigError(f"{where}: {str(e).removeprefix('make_egress_path: ')}") from None


def _entry(fname: str, name: str, value: Any) -> tuple[Entry, list[str]]:
    where = f"{fname}: domain {name!r}"
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a table, got {value!r}")
    warnings: list[str] = []
    entry = Entry(name)
    for key in ("mx_rollup", "replace_base"):
        if key in value:
            if not isinstance(value[key], bool):
                raise ConfigError(f"{where}: {key}: expected true or false, got {value[key]!r}")
            setattr(entry, key, value[key])
    automation = value.get("automation")
    if automation is not None:
        if not isinstance(automation, Sequence) or isinstance(automation, str | bytes):
            raise ConfigError(f"{where}: automation: expected a list of rules")
        if automation and not all(isinstance(rule, Mapping) for rule in automation):
            raise ConfigError(f"{where}: automation: each rule must be a table")
        if automation:
            warnings.append(
                f"{where}: ignoring {len(automation)} automation rule(s): kumoq has no "
                "Traffic Shaping Automation"
            )
    sources = value.get("sources", {})
    if not isinstance(sources, Mapping):
        raise ConfigError(f"{where}: sources: expected a table of source names")
    for source, table in sources.items():
        swhere = f"{where}: source {source!r}"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{swhere}: expected a table, got {table!r}")
        _check_params(swhere, table)
        entry.sources[str(source)] = dict(table)
    entry.params = {k: v for k, v in value.items() if k not in _ENTRY_KEYS}
    _check_params(where, entry.params)
    return entry, warnings


def parse_file(fname: str, data: Any) -> ShapingFile:
    """A file's data (read as TOML or JSON) checked; ConfigError names the file and key."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{fname}: expected a table of domains, got {type(data).__name__}")
    out = ShapingFile(fname)
    for key, value in data.items():
        name = str(key)
        if name == "provider":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{fname}: provider: expected a table of providers")
            if value:
                out.warnings.append(
                    f"{fname}: ignoring provider block(s) {', '.join(map(str, value))}: "
                    "kumoq does not match providers"
                )
            continue
        entry, warnings = _entry(fname, name, value)
        out.warnings.extend(warnings)
        if name == "default":
            out.default = entry
            continue
        if "." not in name.rstrip("."):
            out.warnings.append(
                f"Entry for domain '{name}' consists of a single DNS label. Domain names in "
                f"TOML sections need to be quoted like '[\"{name}.com\"]' otherwise the "
                "'.' will create a nested table rather than being added to the domain name."
            )
        out.domains[name] = entry
    return out


def rollup_domains(files: Iterable[ShapingFile]) -> list[str]:
    """The domains whose site name ``merge`` needs (``mx_rollup`` true), each once."""
    seen: dict[str, None] = {}
    for f in files:
        for name, entry in f.domains.items():
            if entry.mx_rollup:
                seen.setdefault(name)
    return list(seen)


@dataclass(frozen=True, slots=True)
class Shaping:
    """The merged files: entries by site and by domain (``default`` among the domains)."""

    by_site: Mapping[str, Entry]
    by_domain: Mapping[str, Entry]
    warnings: tuple[str, ...]
    errors: tuple[str, ...]
    hash: str

    def get_egress_path_config(self, domain: str, source: str, site: str) -> dict[str, Any]:
        """The merged ``make_egress_path`` table for one (domain, source, site)."""
        params = Entry("")
        default = self.by_domain.get("default")
        if default is not None:
            params.merge_from(default)
        by_site = self.by_site.get(site)
        by_domain = self.by_domain.get(domain)
        if by_site is not None:
            params.merge_from(by_site)
        if by_domain is not None:
            params.merge_from(by_domain)
        for entry in (by_site, by_domain):
            if entry is not None and source in entry.sources:
                _merge_table(params.params, entry.sources[source])
        return params.params

    def referenced_sources(self) -> dict[str, list[str]]:
        """Each source name an entry overrides, with the entries (``site:x``, ``domain:y``)."""
        out: dict[str, list[str]] = {}
        for kind, entries in (("site", self.by_site), ("domain", self.by_domain)):
            for name, entry in entries.items():
                for source in entry.sources:
                    out.setdefault(source, []).append(f"{kind}:{name}")
        return dict(sorted(out.items()))


class _Collector:
    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.errors: list[str] = []

    def push(self, level: CheckLevel, text: str) -> None:
        if level is CheckLevel.WARN:
            self.warnings.append(text)
        elif level is CheckLevel.ERROR:
            self.errors.append(text)


def _into(table: dict[str, Entry], name: str, entry: Entry) -> None:
    existing = table.get(name)
    if existing is None:
        table[name] = entry.copy()
    else:
        existing.merge_from(entry)


def merge(
    files: Sequence[ShapingFile | tuple[CheckLevel, str]],
    sites: Mapping[str, str | DnsFailure],
    options: ShapingOptions,
) -> Shaping:
    """Merge checked files in order. A ``(level, text)`` item is a file that could not be read
    (reported at ``level``); ``sites`` answers ``rollup_domains``."""
    collect = _Collector()
    by_site: dict[str, Entry] = {}
    by_domain: dict[str, Entry] = {}
    aliases: dict[str, list[str]] = {}
    for f in files:
        if isinstance(f, tuple):
            collect.push(*f)
            continue
        collect.warnings.extend(f.warnings)
        if f.default is not None:
            _into(by_domain, "default", f.default)
        for name, entry in f.domains.items():
            if not entry.mx_rollup:
                _into(by_domain, name, entry)
                continue
            site = sites.get(name)
            if site is None or isinstance(site, DnsFailure):
                why = site.text if site is not None else "it was not looked up"
                collect.push(
                    options.dns_fail,
                    f"error resolving MX for {name}: {why}. "
                    "Ignoring the shaping config for that domain.",
                )
                continue
            if not site:
                collect.push(
                    options.null_mx,
                    f"domain {name} has a NULL MX and cannot be used with mx_rollup=true. "
                    "Ignoring the shaping config for that domain.",
                )
                continue
            aliases.setdefault(site, [])
            if name not in aliases[site]:
                aliases[site].append(name)
            _into(by_site, site, entry)
    for site, names in aliases.items():
        if len(names) > 1:
            collect.push(
                options.aliased_site,
                f"multiple domain blocks alias to the same site: {site}: {', '.join(names)}",
            )
    digest = hashlib.sha256()
    for kind, entries in (("by_site", by_site), ("by_domain", by_domain)):
        digest.update(kind.encode())
        for name, entry in entries.items():
            state = [name, entry.params, entry.sources, entry.replace_base]
            digest.update(json.dumps(state, sort_keys=True, default=str).encode())
    for text in (*collect.warnings, "errors", *collect.errors):
        digest.update(text.encode())
    return Shaping(
        by_site, by_domain, tuple(collect.warnings), tuple(collect.errors), digest.hexdigest()
    )
