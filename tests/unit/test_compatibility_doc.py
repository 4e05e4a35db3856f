"""docs/compatibility.md is what tools/compat_inventory.py makes of kumoq as it is now: the page
cannot fall behind the code. Its hand-kept overrides name real items that kumoq has."""

from __future__ import annotations

from tools import compat_inventory as inv


def test_the_committed_page_is_up_to_date():
    page = inv.PAGE.read_text()
    assert page == inv.generate(), (
        f"docs/compatibility.md is out of date: run `{inv.REFRESH}` and commit the result"
    )


def test_every_override_names_an_item_kumoq_has():
    items = inv.read_items()
    keys = {i.key for i in items}
    found = inv.present(items)
    assert set(inv.OVERRIDES) <= keys, set(inv.OVERRIDES) - keys
    # An override refines what was found; an item that is missing needs none.
    assert set(inv.OVERRIDES) <= found, set(inv.OVERRIDES) - found
    assert {f"function:{n}" for n in inv.TYPE_PROBES} <= keys


def test_the_item_list_covers_every_group():
    items = inv.read_items()
    names = {(i.group, i.name) for i in items}
    assert len(names) == len(items)
    assert {("function", "kumo.on"), ("event", "smtp_server_message_received"),
            ("method", "set_meta"), ("endpoint", "POST /api/inject/v1"),
            ("address", "domain")} <= names  # fmt: skip
    status = inv.statuses(items)
    assert status["function:kumo.on"] == ("supported", "")
    assert status["method:dkim_verify"][0] == "partial"
    assert status["function:kumo.dkim.set_signing_threads"][0] == "not yet available"


def test_classify_reads_kumomta_doc_paths():
    c = inv.classify
    assert c("docs/reference/kumo/memoize.md") == inv.Item(
        "function", "kumo.memoize", "docs/reference/kumo/memoize.md"
    )
    assert c("docs/reference/kumo/make_egress_path/_index.md").name == "kumo.make_egress_path"  # type: ignore[union-attr]
    assert c("docs/reference/kumo/make_egress_path/max_ready.md") is None
    assert c("docs/reference/kumo.dns/lookup_mx.md").name == "kumo.dns.lookup_mx"  # type: ignore[union-attr]
    assert c("docs/reference/kumo.dns/resolver_options/_index.md") is None
    assert c("docs/reference/string/split.md").name == "kumo.string.split"  # type: ignore[union-attr]
    assert c("docs/reference/events/_index.md") is None
    assert c("docs/reference/message/save.md") == inv.Item(
        "method", "save", "docs/reference/message/save.md"
    )
    assert c("docs/reference/headermap/from.md") is None
