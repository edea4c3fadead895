"""The landing page of a one-click link: ``GET /j/ROOM`` and ``GET /install/OS``.

A CSR sends the customer ``https://SERVER/j/482913#1307553``-style links:
``/j/ROOM#SECRET``. The secret is in the URL fragment, which browsers never send to
a server, so it stays out of this server and its logs. The page's script reads the
fragment, builds ``peerdesk://join/CODE?signal=wss://SERVER`` and opens it (the
installed agent registered that scheme); a button does the same, and the page offers
the installer for the visitor's operating system.

The page is static apart from the room id (six digits, checked before anything is
written); its script and style are pinned by hash in a strict Content-Security-Policy.

Installers are served from the directory named by ``PEERDESK_INSTALLERS`` when set:
``peerdesk-linux`` (or ``install.sh``), ``peerdesk-windows.exe``, ``peerdesk-macos.zip``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path

from aiohttp import web

ROOM_RE = re.compile(r"[0-9]{6}")

INSTALLERS: dict[str, tuple[str, ...]] = {
    "linux": ("peerdesk-linux", "install.sh"),
    "windows": ("peerdesk-windows.exe",),
    "macos": ("peerdesk-macos.zip",),
}
"Per OS, the file names looked for in ``PEERDESK_INSTALLERS``, first match wins."

_STYLE = """
body{font:16px/1.5 system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem;color:#222}
h1{font-size:1.4rem}.code{font:600 1.6rem ui-monospace,monospace;letter-spacing:.05em}
a.button{display:inline-block;padding:.6rem 1.2rem;border-radius:.4rem;background:#1f6feb;
color:#fff;text-decoration:none}.hidden{display:none}.os-current{font-weight:700}
.warn{color:#a40}
"""

_SCRIPT = """
(function () {
  "use strict";
  var room = document.body.getAttribute("data-room");
  var secret = window.location.hash.replace(/^#/, "");
  var bad = document.getElementById("bad");
  var good = document.getElementById("good");
  if (!/^[0-9]{6}$/.test(room) || !/^[0-9]{6}$/.test(secret)) {
    bad.className = "warn";
    return;
  }
  var d = room + secret;
  var code = d.slice(0, 4) + "-" + d.slice(4, 8) + "-" + d.slice(8, 12);
  var scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  var signal = scheme + "//" + window.location.host;
  var link = "peerdesk://join/" + code + "?signal=" + encodeURIComponent(signal);
  document.getElementById("code").textContent = code;
  document.getElementById("open").setAttribute("href", link);
  good.className = "";
  var ua = (navigator.userAgentData && navigator.userAgentData.platform) ||
    navigator.platform || navigator.userAgent || "";
  var os = /win/i.test(ua) ? "windows" : /mac|iphone|ipad/i.test(ua) ? "macos" :
    /linux|x11|cros/i.test(ua) ? "linux" : "";
  if (os) {
    var mine = document.getElementById("os-" + os);
    if (mine) { mine.className = "os-current"; }
    document.body.setAttribute("data-os", os);
  }
  if (document.body.getAttribute("data-autolaunch") === "1") {
    window.addEventListener("load", function () {
      window.setTimeout(function () { window.location.href = link; }, 200);
    });
  }
})();
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CSP = (
    "default-src 'none'; "
    f"script-src {_sha256(_SCRIPT)}; "
    f"style-src {_sha256(_STYLE)}; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_HEADERS = {
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Join a PeerDesk support session</title>
<style>{style}</style></head>
<body data-room="{room}" data-autolaunch="1">
<h1>Join a PeerDesk support session</h1>
<div id="good" class="hidden">
<p>Your session code is <span id="code" class="code"></span>.</p>
<p><a id="open" class="button" href="#">Open PeerDesk and join</a></p>
<p>Your browser may ask whether to open PeerDesk: allow it. The agent then shows a
six-digit check code; read it with your support contact before you share anything.</p>
</div>
<p id="bad" class="hidden">This link is incomplete: the part after <code>#</code> is
missing. Ask your support contact for the whole link, or type the 12-digit code into
PeerDesk.</p>
<h2>No PeerDesk yet?</h2>
<p>Install it, then come back to this page and press the button again:</p>
<ul>
<li id="os-windows"><a href="/install/windows">PeerDesk for Windows</a></li>
<li id="os-macos"><a href="/install/macos">PeerDesk for macOS</a></li>
<li id="os-linux"><a href="/install/linux">PeerDesk for Linux</a></li>
</ul>
<p>The code never reaches this server: it stays in the part of the link after
<code>#</code>, which browsers keep to themselves. PeerDesk checks it end to end.</p>
<script>{script}</script>
</body></html>
"""


async def join_page(request: web.Request) -> web.Response:
    """``GET /j/ROOM``: the page that opens ``peerdesk://join/...`` for the visitor."""
    room = request.match_info["room"]
    if not ROOM_RE.fullmatch(room):
        raise web.HTTPNotFound(text="no such session link: /j/ takes a 6-digit room id\n")
    body = _PAGE.format(style=_STYLE, script=_SCRIPT, room=room)
    return web.Response(text=body, content_type="text/html", headers=_HEADERS)


async def installer(request: web.Request) -> web.StreamResponse:
    """``GET /install/OS``: the installer for ``linux``, ``windows`` or ``macos``."""
    os_name = request.match_info["os"]
    names = INSTALLERS.get(os_name)
    if names is None:
        raise web.HTTPNotFound(text="installers exist for linux, windows and macos\n")
    where = os.environ.get("PEERDESK_INSTALLERS")
    if where:
        base = Path(where)
        for name in names:
            path = base / name
            if path.is_file():
                return web.FileResponse(
                    path,
                    headers={
                        "Content-Disposition": f'attachment; filename="{name}"',
                        "X-Content-Type-Options": "nosniff",
                    },
                )
    raise web.HTTPNotFound(
        text=f"this server offers no PeerDesk installer for {os_name}; "
        "ask your support contact for one\n"
    )


def setup(app: web.Application) -> None:
    """Add the landing page routes to a signaling server's application."""
    app.router.add_get("/j/{room}", join_page)
    app.router.add_get("/install/{os}", installer)
