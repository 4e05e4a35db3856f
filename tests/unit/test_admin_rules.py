"""AdminRules: matching of criteria against queue names, expiry, cancelling (pure)."""

from __future__ import annotations

import pytest

from kumoq.message import parse_queue_name
from kumoq.scheduler.admin_rules import AdminCriteria, AdminRules, criteria_from_mapping


def match(criteria: AdminCriteria, name: str) -> bool:
    return criteria.matches(name, parse_queue_name(name))


@pytest.mark.parametrize(
    ("criteria", "name", "expected"),
    [
        (AdminCriteria(), "anything.example", True),
        (AdminCriteria(domain="Example.COM"), "example.com", True),
        (AdminCriteria(domain="example.com"), "camp:ten@example.com", True),
        (AdminCriteria(domain="example.com"), "other.com", False),
        (AdminCriteria(campaign="camp"), "camp:ten@example.com", True),
        (AdminCriteria(campaign="camp"), "other:ten@example.com", False),
        (AdminCriteria(campaign="camp"), "example.com", False),
        (AdminCriteria(tenant="ten"), "camp:ten@example.com", True),
        (AdminCriteria(tenant="ten"), "ten@example.com", True),
        (AdminCriteria(tenant="ten"), "camp:other@example.com", False),
        (AdminCriteria(routing_domain="relay.test"), "example.com!relay.test", True),
        (AdminCriteria(routing_domain="relay.test"), "example.com", False),
        (AdminCriteria(domain="example.com", tenant="ten"), "ten@example.com", True),
        (AdminCriteria(domain="example.com", tenant="ten"), "ten@other.com", False),
        # queue_names take precedence over the other criteria
        (AdminCriteria(domain="x.com", queue_names=("example.com",)), "example.com", True),
        (AdminCriteria(queue_names=("a.com", "b.com")), "c.com", False),
    ],
)
def test_criteria_match_the_parts_of_the_queue_name(
    criteria: AdminCriteria, name: str, expected: bool
) -> None:
    assert match(criteria, name) is expected


def test_no_criteria_is_everything() -> None:
    assert AdminCriteria().everything
    assert not AdminCriteria(tenant="t").everything
    assert criteria_from_mapping({"domain": "a.com", "queue_names": ["q"]}) == AdminCriteria(
        domain="a.com", queue_names=("q",)
    )


def test_rules_expire_and_are_dropped_from_the_lists() -> None:
    rules = AdminRules()
    rule = rules.add_bounce(AdminCriteria(domain="a.com"), "bad list", now=100.0, duration=60)
    parts = parse_queue_name("a.com")
    assert rules.bounce_for("a.com", parts, 159.0) is rule
    assert rules.bounce_for("b.com", parse_queue_name("b.com"), 159.0) is None
    assert rules.bounce_for("a.com", parts, 160.0) is None
    assert rules.bounces(160.0) == []


def test_cancel_removes_a_rule_once() -> None:
    rules = AdminRules()
    rule = rules.add_suspend(AdminCriteria(), "maintenance", now=0.0)
    assert rules.suspension_for("x.com", parse_queue_name("x.com"), 1.0) is rule
    assert rules.cancel_suspend(rule.id) is True
    assert rules.cancel_suspend(rule.id) is False
    assert rules.suspension_for("x.com", parse_queue_name("x.com"), 1.0) is None


def test_ready_queue_suspension_by_exact_name_longest_wins() -> None:
    rules = AdminRules()
    name = "unspecified->mx.example.com@smtp_client"
    assert rules.ready_suspensions(0.0) == []
    short = rules.add_ready_suspension(name, "short", now=0.0, duration=10)
    long = rules.add_ready_suspension(name, "long", now=0.0, duration=100)
    assert rules.any_ready_suspension is True
    assert rules.ready_suspension_for(name, 5.0) is long
    assert rules.ready_suspension_for("other->x@smtp_client", 5.0) is None
    rules.cancel_ready_suspension(long.id)
    assert rules.ready_suspension_for(name, 5.0) is short
    assert rules.ready_suspension_for(name, 10.0) is None


def test_list_entries_use_kumomta_shapes() -> None:
    rules = AdminRules()
    rule = rules.add_bounce(AdminCriteria(campaign="c"), "why", now=0.0, duration=3725)
    rule.count("c:@a.com", 2)
    entry = rule.to_json(0.0)
    assert entry == {
        "id": rule.id,
        "reason": "why",
        "domain": None,
        "routing_domain": None,
        "campaign": "c",
        "tenant": None,
        "duration": "1h 2m 5s",
        "bounced": {"c:@a.com": 2},
        "total_bounced": 2,
    }
    suspension = rules.add_ready_suspension("q", "r", now=0.0, duration=1)
    assert suspension.to_json(0.5)["duration"] == "0s"
