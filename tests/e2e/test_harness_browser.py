"""The harness's HTML report in a real browser: headless Chromium renders the page of a real run;
its DOM holds both plots with their data points, and its screenshot is a PNG of the window's
size in which the plots' colours are drawn.

``make test`` (and so CI, through .ci/run) installs Chromium with apt-get when it is missing.
Without it this test is skipped, unless ``KUMOQ_REQUIRE_BROWSER`` is set (CI sets it), which
turns the skip into a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from kumoq.testing.harness_report import write_html
from kumoq.testing.harness_run import HarnessOptions, run_harness

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.slow]

WIDTH, HEIGHT = 1000, 1500
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

RELAY = """
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.start_esmtp_listener { listen = '127.0.0.1:0' }
  kumo.define_spool { name = 'data', path = './var/spool', kind = 'SQLite' }
  kumo.define_spool { name = 'meta', path = './var/spool', kind = 'SQLite' }
  kumo.configure_local_logs { log_dir = './var/log' }
end)
kumo.on('get_queue_config', function(domain)
  return kumo.make_queue_config {
    max_message_rate = domain == 'yahoo.com' and '40/s' or nil, protocol = { smtp = {} },
  }
end)
"""


def chromium() -> str:
    found = os.environ.get("KUMOQ_CHROMIUM") or next(
        filter(None, map(shutil.which, BROWSERS)), None
    )
    if found is None:
        reason = ("Chromium not found: `make test` installs it (apt-get install chromium), or set "
                  "KUMOQ_CHROMIUM to a Chrome or Chromium binary")  # fmt: skip
        if os.environ.get("KUMOQ_REQUIRE_BROWSER"):
            pytest.fail(reason + " (KUMOQ_REQUIRE_BROWSER is set)")
        pytest.skip(reason)
    return found


def headless(browser: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         f"--window-size={WIDTH},{HEIGHT}", *args],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB(A) rows of an 8-bit RGB or RGBA PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", header[:10])
    assert depth == 8
    assert color in (2, 6)  # RGB, RGBA
    bpp = 3 if color == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        kind, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return (
        width,
        height,
        [bytes(px[:3]) for row in rows for px in zip(*[iter(row)] * bpp, strict=True)],
    )


def test_the_report_renders_its_plots_in_headless_chromium(tmp_path):
    browser = chromium()
    policy = tmp_path / "relay.lua"
    policy.write_text(RELAY)
    result = run_harness(HarnessOptions(
        policy=policy, messages=300, domains=(("gmail.com", 2), ("yahoo.com", 1)), timeout=60,
        sample_every=0.2,
    ))  # fmt: skip
    assert result.exit_status == 0
    page = tmp_path / "report.html"
    write_html(result, page)

    dom = headless(browser, tmp_path, "--dump-dom", page.as_uri()).stdout.decode()
    for chart, series in (("deliveries", 2), ("depth", 2)):
        svg = re.search(rf'<svg class="plot" id="{chart}".*?</svg>', dom, re.S)
        assert svg is not None, chart
        assert len(re.findall(r'<polyline class="series"', svg.group(0))) == series
        points = re.findall(r'<circle class="point"[^>]*data-y="([\d.e+-]+)"', svg.group(0))
        assert len(points) >= 4, chart
        assert any(float(y) > 0 for y in points), chart  # data, not a flat line at zero
    assert "gmail-smtp-in.l.google.com" in dom
    assert "yahoodns.net" in dom

    shot = tmp_path / "report.png"
    headless(browser, tmp_path, f"--screenshot={shot}", page.as_uri())
    width, height, pixels = png_pixels(shot.read_bytes())
    assert (width, height) == (WIDTH, HEIGHT)
    colours = set(pixels)
    assert len(colours) > 50  # text, axes and lines, not a blank page
    # The first two series colours of the plots (#1f77b4, #ff7f0e) are on screen.
    assert {b"\x1f\x77\xb4", b"\xff\x7f\x0e"} <= colours
