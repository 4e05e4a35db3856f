"""KumoMTA's InjectV1Request is parsed field by field, and every mistake names its field."""

from __future__ import annotations

from typing import Any

import pytest

from kumoq.http.inject_schema import (
    Attachment,
    BuilderContent,
    FromHeader,
    SchemaError,
    TemplateDialect,
    TraceHeaders,
    parse_inject_request,
)
from kumoq.message import EnvelopeAddress


def minimal(**extra: Any) -> dict[str, Any]:
    return {
        "envelope_sender": "noreply@example.com",
        "content": "Subject: hello\n\nHello there",
        "recipients": [{"email": "recipient@example.com"}],
        **extra,
    }


def test_the_documented_minimal_request():
    request = parse_inject_request(minimal())
    assert request.envelope_sender == EnvelopeAddress("noreply", "example.com")
    assert request.content == "Subject: hello\n\nHello there"
    assert [r.email for r in request.recipients] == ["recipient@example.com"]
    assert request.template_dialect is TemplateDialect.JINJA
    assert request.trace_headers == TraceHeaders(received_header=False)
    assert not request.deferred_spool
    assert not request.deferred_generation


def test_kumomtas_full_example_with_the_builder_form():
    document = {
        "envelope_sender": "some.id@bounces.sender-example.com",
        "recipients": [
            {
                "email": "john.smith@mailbox-example.com",
                "name": "John Smith",
                "substitutions": {"age": 42, "gender": "male"},
                "metadata": {"campaign_id": "promo-2026-q2"},
            }
        ],
        "substitutions": {"campaign_title": "Fall Campaign"},
        "content": {
            "subject": "hi",
            "text_body": "plain",
            "html_body": "<p>html</p>",
            "amp_html_body": None,
            "headers": {"X-Tenant": "MyTenant", "X-Other": "2"},
            "from": {"email": "sales@sender-example.com", "name": "Sales"},
            "reply_to": {"email": "help@sender-example.com"},
            "attachments": [
                {
                    "base64": True,
                    "content_id": "my-image",
                    "content_type": "image/gif",
                    "data": "R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7",
                    "file_name": "pixel.gif",
                }
            ],
        },
        "template_dialect": "Static",
        "deferred_spool": False,
        "deferred_generation": False,
        "trace_headers": {
            "received_header": True,
            "supplemental_header": False,
            "header_name": "X-Ref",
            "include_meta_names": ["tenant"],
        },
    }
    request = parse_inject_request(document)
    (recipient,) = request.recipients
    assert recipient.name == "John Smith"
    assert recipient.substitutions == {"age": 42, "gender": "male"}
    assert recipient.metadata == {"campaign_id": "promo-2026-q2"}
    assert request.substitutions == {"campaign_title": "Fall Campaign"}
    assert request.template_dialect is TemplateDialect.STATIC
    assert request.trace_headers == TraceHeaders(True, False, "X-Ref", ("tenant",))
    content = request.content
    assert isinstance(content, BuilderContent)
    assert content.headers == (("X-Tenant", "MyTenant"), ("X-Other", "2"))  # request order
    assert content.from_ == FromHeader("sales@sender-example.com", "Sales")
    assert content.reply_to == FromHeader("help@sender-example.com")
    assert content.attachments == (
        Attachment(
            data="R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7",
            content_type="image/gif",
            content_id="my-image",
            file_name="pixel.gif",
            base64=True,
        ),
    )


def test_the_null_sender_is_allowed():
    assert parse_inject_request(minimal(envelope_sender="")).envelope_sender.is_null


@pytest.mark.parametrize(
    ("document", "field", "text"),
    [
        ([], "", "expected a JSON object"),
        ({k: v for k, v in minimal().items() if k != "content"}, "content", "missing field"),
        ({k: v for k, v in minimal().items() if k != "recipients"}, "recipients", "missing"),
        (
            {k: v for k, v in minimal().items() if k != "envelope_sender"},
            "envelope_sender",
            "missing field 'envelope_sender'",
        ),
        (minimal(sender="x"), "sender", "unknown field 'sender'; expected one of: content"),
        (minimal(envelope_sender=5), "envelope_sender", "expected a string, got a number"),
        (minimal(envelope_sender="nodomain"), "envelope_sender", "expected user@domain"),
        (minimal(recipients={"email": "a@b"}), "recipients", "expected an array, got an object"),
        (minimal(recipients=[{}]), "recipients[0].email", "missing field 'email'"),
        (
            minimal(recipients=[{"email": "a@b.c"}, {"email": "d@e.f", "nmae": "x"}]),
            "recipients[1].nmae",
            "unknown field 'nmae'",
        ),
        (minimal(recipients=[{"email": "a@b", "name": 3}]), "recipients[0].name", "a string"),
        (
            minimal(recipients=[{"email": "a@b", "substitutions": []}]),
            "recipients[0].substitutions",
            "expected an object, got an array",
        ),
        (minimal(content=3), "content", "a message string or a builder object"),
        (minimal(content={"text": "x"}), "content.text", "unknown field 'text'"),
        (minimal(content={"headers": {"X": 1}}), "content.headers.X", "expected a string"),
        (minimal(content={"from": {"name": "x"}}), "content.from.email", "missing field"),
        (
            minimal(content={"attachments": [{"data": "x"}]}),
            "content.attachments[0].content_type",
            "missing field",
        ),
        (minimal(template_dialect="Mustache"), "template_dialect", "unknown dialect"),
        (minimal(deferred_spool="yes"), "deferred_spool", "expected true or false"),
        (minimal(trace_headers={"received": True}), "trace_headers.received", "unknown field"),
        (minimal(substitutions=None), "substitutions", "expected an object, got null"),
    ],
)
def test_each_mistake_names_its_field(document, field, text):
    with pytest.raises(SchemaError) as info:
        parse_inject_request(document)
    assert info.value.field == field
    assert text in str(info.value)


def test_null_is_accepted_where_kumomta_has_an_option():
    request = parse_inject_request(
        minimal(
            recipients=[{"email": "a@b.c", "name": None}],
            content={"text_body": "x", "html_body": None, "subject": None, "from": None},
        )
    )
    assert request.recipients[0].name is None
    assert isinstance(request.content, BuilderContent)
    assert request.content.from_ is None
