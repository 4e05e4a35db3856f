"""kumoq.lua.events: the typed event calls the daemon makes."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from kumoq.errors import PolicyError, RejectError
from kumoq.lua import ConnMeta, PolicyEvents, PolicyRuntime
from kumoq.message import EnvelopeAddress, Message, new_spool_id


def events(tmp_path: Path, src: str) -> PolicyEvents:
    path = tmp_path / "init.lua"
    path.write_text(textwrap.dedent(src))
    return PolicyEvents(PolicyRuntime(path))


@pytest.fixture
def msg():
    return Message(
        id=new_spool_id(1_700_000_000.0),
        sender=EnvelopeAddress.parse("a@sender.example"),
        recipients=[EnvelopeAddress.parse("b@rcpt.example")],
        data=b"Subject: hi\r\n\r\nbody\r\n",
    )


async def test_no_handlers_means_defaults(tmp_path, msg):
    ev = events(tmp_path, "")
    conn = {"x": 1}
    assert await ev.smtp_server_ehlo("client.example", conn, ["PIPELINING"]) is None
    await ev.smtp_server_mail_from(msg.sender, conn)
    await ev.smtp_server_rcpt_to(msg.recipient, conn)
    await ev.smtp_server_message_received(msg, conn)
    assert ev.get_queue_config("rcpt.example", None, None, None) is None
    assert ev.call("anything", 1) is None
    assert conn == {"x": 1}
    assert msg.meta == {}


async def test_ehlo_arguments_and_replacement_list(tmp_path):
    ev = events(
        tmp_path,
        """
        kumo.on('smtp_server_ehlo', function(domain, conn_meta, extensions)
          conn_meta:set_meta('seen_ehlo', domain)
          if domain == 'keep.example' then return nil end
          if domain == 'none.example' then return {} end
          if domain == 'bad.example' then return {1, 2} end
          local out = {}
          for _, ext in ipairs(extensions) do
            if ext ~= 'CHUNKING' then table.insert(out, ext) end
          end
          return out
        end)
        """,
    )
    conn: dict[str, object] = {}
    assert await ev.smtp_server_ehlo("c.example", conn, ["PIPELINING", "CHUNKING", "8BITMIME"]) == [
        "PIPELINING",
        "8BITMIME",
    ]
    assert conn == {"seen_ehlo": "c.example"}
    assert await ev.smtp_server_ehlo("keep.example", conn, ["X"]) is None
    assert await ev.smtp_server_ehlo("none.example", conn, ["X"]) == []
    with pytest.raises(PolicyError, match="must return a list of strings"):
        await ev.smtp_server_ehlo("bad.example", conn, ["X"])


@pytest.mark.parametrize("event", ["smtp_server_mail_from", "smtp_server_rcpt_to"])
async def test_address_events_see_the_address_and_conn_meta(tmp_path, event):
    ev = events(
        tmp_path,
        f"""
        kumo.on('{event}', function(addr, conn_meta)
          conn_meta:set_meta('got', {{addr.user, addr.domain, addr.email, tostring(addr)}})
          if addr.domain == 'blocked.example' then
            kumo.reject(550, '5.7.1 ' .. addr.email .. ' is not welcome')
          end
        end)
        """,
    )
    conn: dict[str, Any] = {}
    await getattr(ev, event)(EnvelopeAddress.parse("user@ok.example"), conn)
    assert conn["got"] == ["user", "ok.example", "user@ok.example", "user@ok.example"]
    with pytest.raises(RejectError) as info:
        await getattr(ev, event)(EnvelopeAddress.parse("x@blocked.example"), conn)
    assert info.value.code == 550
    assert info.value.reply_text == "5.7.1 x@blocked.example is not welcome"
    assert not info.value.disconnect


async def test_ehlo_reject(tmp_path):
    ev = events(tmp_path, "kumo.on('smtp_server_ehlo', function() kumo.reject(421, 'busy') end)")
    with pytest.raises(RejectError) as info:
        await ev.smtp_server_ehlo("c.example", {}, [])
    assert (info.value.code, info.value.reply_text, info.value.disconnect) == (421, "busy", True)


async def test_message_received_changes_land_in_the_message_and_conn_meta(tmp_path, msg):
    ev = events(
        tmp_path,
        """
        kumo.on('smtp_server_message_received', function(msg, conn_meta)
          msg:set_meta('tenant', conn_meta:get_meta('authn_id'))
          msg:set_meta('queue', 'custom')
          msg:append_header('X-Policy', 'seen')
          conn_meta:set_meta('messages', (conn_meta:get_meta('messages') or 0) + 1)
        end)
        """,
    )
    conn: dict[str, Any] = {"authn_id": "tenant-a"}
    await ev.smtp_server_message_received(msg, conn)
    await ev.smtp_server_message_received(msg, conn)
    assert msg.meta == {"tenant": "tenant-a", "queue": "custom"}
    assert msg.queue_name() == "custom"
    assert msg.data == b"Subject: hi\r\nX-Policy: seen\r\nX-Policy: seen\r\n\r\nbody\r\n"
    assert conn["messages"] == 2
    assert ev.runtime.messages == {}
    assert ev.runtime.conns == {}


async def test_message_received_reject_and_errors(tmp_path, msg):
    ev = events(
        tmp_path,
        """\
        kumo.on('smtp_server_message_received', function(msg)
          if msg:get_meta('mode') == 'reject' then kumo.reject(552, 'too spammy') end
          if msg:get_meta('mode') == 'crash' then local x = nil; return x.y end
        end)
        """,
    )
    msg.meta["mode"] = "reject"
    with pytest.raises(RejectError) as info:
        await ev.smtp_server_message_received(msg, {})
    assert (info.value.code, info.value.reply_text) == (552, "too spammy")
    msg.meta["mode"] = "crash"
    with pytest.raises(PolicyError) as err:
        await ev.smtp_server_message_received(msg, {})
    assert not isinstance(err.value, RejectError)
    assert err.value.location == "init.lua:3"
    assert ev.runtime.messages == {}  # handles are released on errors too


def test_get_queue_config_receives_the_queue_name_parts(tmp_path):
    ev = events(
        tmp_path,
        """
        kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
          seen = {domain, tenant == nil, campaign, routing_domain}
          return kumo.make_queue_config { egress_pool = tenant or 'default' }
        end)
        kumo.on('seen', function() return seen end)
        """,
    )
    qc = ev.get_queue_config("rcpt.example", None, "spring", "relay.example")
    assert qc is not None
    assert qc.egress_pool == "default"
    assert ev.call("seen") == ["rcpt.example", True, "spring", "relay.example"]
    qc = ev.get_queue_config("rcpt.example", "t1", None, None)
    assert qc is not None
    assert qc.egress_pool == "t1"


def test_generic_call_converts_each_kind_of_argument(tmp_path, msg):
    ev = events(
        tmp_path,
        """
        kumo.on('custom', function(m, addr, conn, data, n)
          conn:set_meta('id', m:id())
          return {addr.email, data.list[2], data.map.k, n}
        end)
        """,
    )
    conn = ConnMeta()
    out = ev.call(
        "custom",
        msg,
        EnvelopeAddress.parse("x@y.example"),
        conn,
        {"list": [1, 2], "map": {"k": "v"}},
        7,
    )
    assert out == ["x@y.example", 2, "v", 7]
    assert conn == {"id": msg.id}
