"""Each recipient's message: template expansion as KumoMTA documents it, MIME as its builder
builds it, and one body shared by the recipients whose variables do not differ."""

from __future__ import annotations

import base64
import email
import email.policy
from email.message import EmailMessage
from typing import Any

import pytest

from kumoq.http.inject_build import CompiledContent, ContentError, RenderError
from kumoq.http.inject_schema import Recipient, parse_inject_request

NOW = 1_700_000_000.0
GIF = "R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"


def compiled(content: Any, **extra: Any) -> CompiledContent:
    document = {
        "envelope_sender": "noreply@example.com",
        "recipients": [{"email": "r@example.com"}],
        "content": content,
        **extra,
    }
    return CompiledContent(parse_inject_request(document))


def render(content: CompiledContent, email_: str = "r@example.com", **fields: Any):
    prefix, body = content.render(Recipient(email=email_, **fields), NOW)
    return prefix, body


def parsed(prefix: bytes, body: bytes) -> EmailMessage:
    msg = email.message_from_bytes(prefix + body, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


# -- raw content -----------------------------------------------------------------------------


def test_raw_content_is_one_template_with_kumomtas_variables():
    content = compiled(
        "To: {{ to_header }}\nSubject: {{ greeting }} {{ name }}\n\n"
        "Dear {{ name }} <{{ email }}>, you are {{ age }}. {{ campaign_title }}\n",
        substitutions={"greeting": "Hello", "campaign_title": "Fall", "age": 1},
    )
    prefix, body = render(content, "john@example.com", name="John Smith", substitutions={"age": 42})
    assert prefix == b""
    assert body == (
        b"To: John Smith <john@example.com>\r\nSubject: Hello John Smith\r\n"
        b"MIME-Version: 1.0\r\n\r\n"
        b"Dear John Smith <john@example.com>, you are 42. Fall\r\n"
    )


def test_the_recipients_substitutions_win_even_over_name_and_email():
    content = compiled("Subject: x\n\n{{ name }} {{ email }}")
    _, body = render(content, name="A", substitutions={"name": "B", "email": "e"})
    assert body.endswith(b"\r\n\r\nB e\r\n")


def test_values_print_as_minijinja_prints_them_and_undefined_prints_nothing():
    content = compiled("Subject: x\n\n[{{ a }}|{{ b }}|{{ c }}|{{ missing }}|{{ n }}]")
    _, body = render(content, substitutions={"a": None, "b": True, "c": False, "n": 1.5})
    assert body.endswith(b"[none|true|false||1.5]\r\n")


def test_line_endings_become_crlf_and_an_existing_mime_version_stays():
    content = compiled("Subject: x\rMIME-Version: 1.0\n\nline1\nline2\r\nline3")
    _, body = render(content)
    assert body == b"Subject: x\r\nMIME-Version: 1.0\r\n\r\nline1\r\nline2\r\nline3\r\n"


def test_static_expands_nothing():
    content = compiled("Subject: {{ name }}\n\n{{ name }}", template_dialect="Static")
    _, body = render(content, name="Z")
    assert body.endswith(b"\r\n\r\n{{ name }}\r\n")
    assert b"Subject: {{ name }}" in body


def test_handlebars_is_refused_as_unprocessable():
    with pytest.raises(ContentError, match="Handlebars"):
        compiled("Subject: x\n\nx", template_dialect="Handlebars")


def test_a_syntax_error_names_the_field_and_line():
    with pytest.raises(ContentError, match=r"field 'content' as template: .*\(line 3\)"):
        compiled("Subject: x\n\n{% if %}")
    with pytest.raises(ContentError, match=r"content\.html_body"):
        compiled({"text_body": "ok", "html_body": "{{ oops"})
    with pytest.raises(ContentError, match=r"headers\[X-A\]"):
        compiled({"text_body": "ok", "headers": {"X-A": "{% endfor %}"}})


def test_raw_content_that_is_not_a_message_fails_that_recipient():
    content = compiled("Hello {{ name }}, no headers here")
    with pytest.raises(RenderError, match="line 1 of the header block is not a header field"):
        render(content, name="x")


def test_a_render_error_fails_only_that_recipient():
    content = compiled("Subject: x\n\n{{ profile.city }}")
    with pytest.raises(RenderError, match="template expansion failed"):
        render(content)
    _, body = render(content, substitutions={"profile": {"city": "Paris"}})
    assert body.endswith(b"Paris\r\n")


def test_the_sandbox_blocks_python_internals():
    content = compiled("Subject: x\n\n{{ name.__class__.__mro__ }}")
    with pytest.raises(RenderError):
        render(content, name="x")


# -- sharing ----------------------------------------------------------------------------------


def test_recipients_share_one_body_object_when_no_variable_they_use_differs():
    content = compiled(
        "Subject: {{ campaign_title }}\n\nHello {{ city }}", substitutions={"campaign_title": "T"}
    )
    _, first = render(content, "a@example.com", name="A", substitutions={"city": "Paris"})
    _, second = render(content, "b@example.com", name="B", substitutions={"city": "Paris"})
    _, third = render(content, "c@example.com", substitutions={"city": "Rome"})
    assert second is first  # name and email differ, but the template does not use them
    assert third is not first
    assert third.endswith(b"Hello Rome\r\n")


def test_a_body_that_uses_the_recipient_is_not_shared():
    content = compiled("Subject: x\n\nHello {{ name }}")
    _, first = render(content, name="A")
    _, second = render(content, name="B")
    assert first != second


def test_builder_recipients_share_the_body_and_each_get_their_own_to():
    content = compiled({"subject": "Hi", "text_body": "Same for all"})
    prefix_a, body_a = render(content, "a@example.com", name="Ann")
    prefix_b, body_b = render(content, "b@example.com")
    assert body_a is body_b
    assert prefix_a == b"To: Ann <a@example.com>\r\n"
    assert prefix_b == b"To: b@example.com\r\n"
    assert parsed(prefix_a, body_a)["To"] == "Ann <a@example.com>"


# -- builder ----------------------------------------------------------------------------------


def test_builder_text_and_html_make_multipart_alternative_with_headers():
    content = compiled(
        {
            "subject": "hello {{ name }}",
            "text_body": "I am the plain text, {{ name }}. 😀",
            "html_body": "I am <b>html</b>, {{ name }}",
            "from": {"email": "from@example.com", "name": "Sender Name"},
            "reply_to": {"email": "reply@example.com"},
            "headers": {"X-Tenant": "{{ tenant }}", "Subject": "ignored: subject wins"},
        },
        substitutions={"tenant": "MyTenant"},
    )
    msg = parsed(*render(content, "user@example.com", name="James <Smythe>"))
    assert msg["Subject"] == "hello James <Smythe>"
    assert msg["From"] == "Sender Name <from@example.com>"
    assert msg["Reply-To"] == "reply@example.com"
    assert msg["X-Tenant"] == "MyTenant"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert len(msg.get_all("Subject") or []) == 1
    assert msg.get_content_type() == "multipart/alternative"
    text, html = msg.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert text.get_content() == "I am the plain text, James <Smythe>. 😀\r\n"
    assert html.get_content_type() == "text/html"
    assert html.get_content() == "I am <b>html</b>, James &lt;Smythe&gt;\r\n"  # escaped


def test_builder_headers_are_rfc2047_encoded_and_the_body_is_7bit_clean():
    content = compiled({"subject": "Grüße {{ name }}", "text_body": "Grüße"})
    prefix, body = render(content, name="Jürgen")
    assert max(prefix + body) < 0x80
    msg = parsed(prefix, body)
    assert msg["Subject"] == "Grüße Jürgen"
    assert msg["To"] == "Jürgen <r@example.com>"
    assert msg.get_content() == "Grüße\r\n"


def test_an_amp_part_goes_between_text_and_html():
    content = compiled({"text_body": "t", "html_body": "h", "amp_html_body": "<html amp4email>a"})
    msg = parsed(*render(content))
    assert [p.get_content_type() for p in msg.iter_parts()] == [
        "text/plain",
        "text/x-amp-html",
        "text/html",
    ]


def test_a_to_header_in_headers_replaces_the_per_recipient_one():
    content = compiled({"text_body": "t", "headers": {"To": "{{ to_header }}, list@example.com"}})
    prefix, body = render(content, "user@example.com", name="U")
    assert prefix == b""
    msg = parsed(prefix, body)
    assert msg.get_all("To") == ["U <user@example.com>, list@example.com"]


def test_inline_images_go_in_multipart_related_and_attachments_in_multipart_mixed():
    content = compiled(
        {
            "text_body": "see the image",
            "html_body": '<img src="cid:my-image">',
            "attachments": [
                {
                    "data": GIF,
                    "base64": True,
                    "content_type": "image/gif",
                    "content_id": "my-image",
                    "file_name": "pixel.gif",
                },
                {"data": "a,b\n1,2\n", "content_type": "text/csv", "file_name": "data.csv"},
            ],
        }
    )
    msg = parsed(*render(content))
    assert msg.get_content_type() == "multipart/mixed"
    related, csv = msg.iter_parts()
    assert related.get_content_type() == "multipart/related"
    alternative, image = related.iter_parts()
    assert alternative.get_content_type() == "multipart/alternative"
    assert image.get_content_type() == "image/gif"
    assert image["Content-ID"] == "<my-image>"
    assert image.get_content_disposition() == "inline"
    assert image.get_filename() == "pixel.gif"
    assert image.get_content() == base64.b64decode(GIF)
    assert csv.get_content_disposition() == "attachment"
    assert csv.get_filename() == "data.csv"
    assert csv.get_payload(decode=True) == b"a,b\n1,2\n"  # as sent: attachments are opaque


@pytest.mark.parametrize(
    ("content", "text"),
    [
        ({"subject": "no body"}, "at least one of text_body and/or html_body"),
        ({"amp_html_body": "x"}, "at least one of text_body and/or html_body"),
        ({"text_body": "x", "from": {"email": "not an address"}}, "content.from: invalid"),
        ({"text_body": "x", "headers": {"Bad Name": "x"}}, "not a valid header field name"),
        (
            {
                "text_body": "x",
                "attachments": [{"data": "!!", "base64": True, "content_type": "a/b"}],
            },
            r"content.attachments\[0\].data: invalid base64",
        ),
        (
            {"text_body": "x", "attachments": [{"data": "x", "content_type": "nonsense"}]},
            "not a MIME type",
        ),
    ],
)
def test_content_that_cannot_be_built_is_refused_before_any_recipient(content, text):
    with pytest.raises(ContentError, match=text):
        compiled(content)


def test_a_header_value_with_a_line_break_fails_that_recipient():
    content = compiled({"text_body": "x", "headers": {"X-Injected": "{{ v }}"}})
    with pytest.raises(RenderError, match="line break"):
        render(content, substitutions={"v": "a\r\nBcc: victim@example.com"})


def test_a_recipient_address_that_does_not_parse_fails_that_recipient():
    content = compiled({"text_body": "x"})
    with pytest.raises(RenderError, match="recipient email"):
        render(content, "a@b@c")
