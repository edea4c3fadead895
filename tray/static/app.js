// PeerDesk CSR dashboard. Plain JS, no build step. Everything the agent sends is
// shown with textContent (never innerHTML): names and chat come from other people.
"use strict";

const TOKEN = document.querySelector('meta[name="peerdesk-token"]').content;
const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};

const state = { me: null, sessions: new Map(), current: null, ws: null, roles: {} };

function newSession(sid) {
  return {
    sid, code: "", link: "", web: "", csrCode: "", me: "", participants: [], holder: null, sas: {},
    caps: {}, chat: [], files: new Map(), notes: [], ended: false, report: null,
    asking: new Map(), activity: [], sysinfo: null, target: null, screenMode: {},
    role: state.roles[sid] || "primary", lead: "",
  };
}

// -- the agent's websocket -------------------------------------------------------

function connect() {
  const ws = new WebSocket(`ws://${location.host}/ws?t=${encodeURIComponent(TOKEN)}`);
  state.ws = ws;
  ws.onmessage = (m) => onMessage(JSON.parse(m.data));
  ws.onclose = () => { toast("Lost the connection to the agent; reconnecting…"); setTimeout(connect, 1000); };
  ws.onopen = () => { state.sessions.clear(); };
}

function send(obj) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(obj));
  else toast("Not connected to the agent");
}

function command(cmd) {
  if (!state.current) return;
  send({ op: "cmd", session: state.current, cmd });
}

function onMessage(msg) {
  if (msg.type === "hello") { state.me = msg.me; state.roles = msg.roles || {}; return; }
  if (msg.type === "started") {
    if (msg.role) state.roles[msg.session] = msg.role;
    sessionOf(msg.session).role = msg.role || "primary";
    select(msg.session); return;
  }
  if (msg.type === "error") { toast(msg.reason); return; }
  if (msg.type === "note") {
    const s = sessionOf(msg.session); s.notes.push(msg.text); render(); return;
  }
  if (msg.type === "status") {
    apply(sessionOf(msg.session), msg.event, msg.at ? new Date(msg.at) : new Date()); render();
  }
}

function sessionOf(sid) {
  if (!state.sessions.has(sid)) {
    state.sessions.set(sid, newSession(sid));
    if (!state.current) state.current = sid;
  }
  return state.sessions.get(sid);
}

function nameOf(s, id) {
  if (id === s.me) return "you";
  const p = s.participants.find((x) => x.id === id);
  return p ? p.name : id;
}

// every status value carries the time it happened (a reloaded page shows true times)
let at = new Date();
function log(s, text) { s.activity.push({ at, text }); if (s.activity.length > 200) s.activity.shift(); }

function apply(s, e, when) {
  at = when;
  switch (e.event) {
    case "session":
      s.code = e.code; s.link = e.link; s.web = e.web || ""; s.csrCode = e.csr_code; s.me = e.me;
      log(s, "Session started"); break;
    case "joined":
      if (!s.me) s.me = e.me;
      if (e.sas) s.sas[e.peer] = e.sas;
      if (s.role === "assistant" && e.role === "csr" && e.sas) s.lead = e.name;
      log(s, `${e.name} joined as ${e.role === "csr" ? (e.primary ? "primary CSR" : "assistant") : "customer"}` + (e.sas ? ` (check code ${e.sas})` : ""));
      break;
    case "rejoined":
      s.sas[e.peer] = e.sas;
      log(s, `${e.name} joined again from another agent (new check code ${e.sas})`);
      break;
    case "roster":
      s.participants = e.participants;
      if (!s.target || !s.participants.some((p) => p.id === s.target)) {
        const primary = s.participants.find((p) => p.role === "customer" && p.primary);
        s.target = primary ? primary.id : null;
      }
      break;
    case "left":
      log(s, `${nameOf(s, e.peer)} ${e.reason === "left" ? "left" : "was lost"}`);
      if (e.peer === s.me) s.ended = true;
      break;
    case "chat": s.chat.push({ at, from: e.from, name: e.name, text: e.text, to: e.to, mine: e.from === s.me }); break;
    case "consent":
      (s.caps[e.peer] = s.caps[e.peer] || {})[e.cap] = e.state;
      if (e.cap === "control" && e.state !== "granted") s.holder = null;
      log(s, `${e.cap.replace("_", " ")}: ${e.state}${e.reason ? " — " + e.reason : ""}`);
      break;
    case "control": s.holder = e.holder; log(s, `Control: ${e.holder ? nameOf(s, e.holder) : "nobody"}`); break;
    case "assistant_request": s.asking.set(e.peer, e); break;
    case "sysinfo": s.sysinfo = e.data; break;
    case "link": s.link = { ...e, at: Date.now() }; break;
    case "screen_mode":
      s.screenMode[e.peer] = e.mode;
      log(s, `Screen: ${e.mode === "smooth" ? "screen sampling (smoother motion)" : "standard (sharper text)"}`);
      break;
    case "file": {
      const f = s.files.get(e.id) || {};
      Object.assign(f, e); s.files.set(e.id, f);
      if (e.state === "done" || e.state === "failed") log(s, `File ${e.name}: ${e.state}`);
      break;
    }
    case "report": s.report = e; break;
    case "ended": s.ended = true; log(s, `Session ended (${e.reason})`); break;
    case "error": toast(e.reason); log(s, "⚠ " + e.reason); break;
    case "join_failed": log(s, `Failed join attempt: ${e.message}`); break;
    case "code_closed": log(s, `The code is ${e.reason}`); break;
    case "failover": log(s, `Failover: ${nameOf(s, e.primary)} leads now`); break;
    default: break;
  }
}

// -- rendering --------------------------------------------------------------------

function select(sid) {
  state.current = sid; sessionOf(sid); render(); screen.update();
}

// the link under the customer's screen, from the agent's "link" events (every 2 s)
function linkWords(l) {
  const rate = l.kbps >= 1000 ? `${(l.kbps / 1000).toFixed(1)} Mbit/s` : `${l.kbps} kbit/s`;
  // a still screen sends few frames: fps alone says nothing about the link
  const poor = l.loss > 0.05 || l.queue_ms > 150 || (l.rtt_ms !== null && l.rtt_ms > 400);
  return { poor, text: `${poor ? "poor connection" : "connection good"}: ${rate}, ${Math.round(l.fps)} fps` };
}

function renderLink(s) {
  const span = $("link-quality");
  const l = s.link;
  const fresh = l && !s.ended && (s.caps[l.peer] || {}).view === "granted" && Date.now() - l.at < 5000;
  span.hidden = !fresh;
  if (!fresh) return;
  const { poor, text } = linkWords(l);
  span.textContent = text;
  span.className = "link-quality" + (poor ? " poor" : "");
  span.title = `received ${l.kbps} kbit/s, estimated ${l.target_kbps} kbit/s, round trip ${l.rtt_ms ?? "?"} ms, ` +
    `${(l.loss * 100).toFixed(1)} % lost, ${l.queue_ms} ms queued`;
}

function render() {
  const tabs = $("session-tabs");
  tabs.replaceChildren();
  for (const s of state.sessions.values()) {
    const customer = s.participants.find((p) => p.role === "customer" && p.primary);
    const label = s.role === "assistant" ? `Assisting ${s.lead || "…"}`
      : (customer ? customer.name : (s.code ? `Session ${s.code.split("-")[0]}` : s.sid));
    const b = el("button", "session-tab" + (s.sid === state.current ? " active" : "") + (s.ended ? " ended" : ""), label);
    b.dataset.sid = s.sid;
    b.onclick = () => select(s.sid);
    tabs.append(b);
  }
  const s = state.sessions.get(state.current);
  $("empty").hidden = !!s;
  $("workspace").hidden = !s;
  if (!s) return;
  const ended = s.ended;
  $("invite-code").textContent = s.code || "—";
  $("invite-link").value = s.link;
  $("invite-web").value = s.web;
  const mail = `mailto:?subject=${encodeURIComponent("Join my PeerDesk support session")}&body=${encodeURIComponent(
    `Hello,\n\nto let me help you, install PeerDesk and run:\n\n  peerdesk join ${s.link}\n\nor enter the code ${s.code}.\nI will read you a six-digit check code on the phone.\n`)}`;
  $("email-link").href = mail;

  // chat
  const chatLog = $("chat-log");
  chatLog.replaceChildren(...s.chat.map((c) => {
    const line = el("div", "msg" + (c.mine ? " mine" : ""));
    line.append(el("span", "when", c.at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) + " "));
    line.append(el("span", "who", c.mine ? "You" : c.name));
    if (c.to) line.append(el("span", "to", " → " + c.to.map((id) => nameOf(s, id)).join(", ")));
    line.append(el("div", "text", c.text));
    return line;
  }));
  chatLog.scrollTop = chatLog.scrollHeight;
  const others = s.participants.filter((p) => p.id !== s.me);
  fillSelect($("chat-to"), [["", "Everyone"], ...others.map((p) => [p.id, `${p.name} (${roleName(p)})`])]);
  fillSelect($("file-to"), s.participants.filter((p) => p.role === "customer").map((p) => [p.id, p.name]));
  const csrs = s.participants.filter((p) => p.role === "csr");
  fillSelect($("transfer-to"), csrs.map((p) => [p.id, p.id === s.me ? "Me (take it back)" : p.name]));

  // files
  $("file-list").replaceChildren(...[...s.files.values()].map((f) => {
    const li = el("li", "file " + f.state);
    li.dataset.id = f.id;
    const pct = f.size ? Math.floor((100 * f.bytes) / f.size) : (f.state === "done" ? 100 : 0);
    li.append(el("div", "fname", `${f.direction === "send" ? "↑" : "↓"} ${f.name}`));
    const bar = el("progress"); bar.max = 100; bar.value = pct; bar.className = "bar";
    li.append(bar);
    li.append(el("div", "fmeta", `${pct}% · ${human(f.bytes)} of ${human(f.size)} · ${f.state}` + (f.sha256 ? ` · sha256 ${f.sha256.slice(0, 12)}…` : "") + (f.reason ? ` · ${f.reason}` : "")));
    if (f.sha256) li.dataset.sha256 = f.sha256;
    li.dataset.percent = String(pct);
    return li;
  }));
  $("file-hint").hidden = capsOf(s).files === "granted" || capsOf(s).files_advanced === "granted";
  $("note-list").replaceChildren(...s.notes.map((n) => el("li", "", n)));

  // capabilities
  for (const cap of ["view", "control", "files", "sysinfo"]) {
    const pill = $("cap-" + cap);
    const st = capsOf(s)[cap] || "not asked";
    pill.textContent = st; pill.className = "pill " + st.replace(" ", "-");
  }
  $("sysinfo-card").hidden = !s.sysinfo;
  if (s.sysinfo) $("sysinfo").textContent = JSON.stringify(s.sysinfo, null, 2);
  const mine = s.holder && s.holder === s.me;
  renderLink(s);
  const pill = $("control-pill");
  pill.textContent = mine ? "you control" : (s.holder ? `${nameOf(s, s.holder)} controls` : (capsOf(s).view === "granted" ? "view only" : "no view"));
  pill.className = "pill " + (mine ? "granted" : "");

  // participants
  $("participants").replaceChildren(...s.participants.map((p) => {
    const li = el("li", "person" + (p.id === s.target ? " target" : ""));
    li.dataset.id = p.id;
    const avatar = el("span", "avatar " + p.role, (p.name || "?").slice(0, 1).toUpperCase());
    const body = el("div", "pbody");
    body.append(el("div", "pname", p.name + (p.id === s.me ? " (you)" : "")));
    const tags = el("div", "ptags");
    tags.append(el("span", "tag", roleName(p)));
    if (p.primary) tags.append(el("span", "tag primary", "primary"));
    if (s.holder === p.id) tags.append(el("span", "tag control", "has control"));
    body.append(tags);
    const sas = s.sas[p.id];
    if (sas && p.id !== s.me) {  // read it aloud: the two screens must show the same digits
      const check = el("div", "psas");
      check.append(el("span", "label", "check code "), el("span", "digits", `${sas.slice(0, 3)} ${sas.slice(3)}`));
      body.append(check);
    }
    li.append(avatar, body);
    if (p.role === "customer" && !ended) {
      if (!p.primary) {
        const b = el("button", "btn small", "Make primary");
        b.onclick = () => command({ cmd: "make_primary", peer: p.id });
        li.append(b);
      }
      if (p.id !== s.target) {
        const b = el("button", "btn small", "Assist");
        b.onclick = () => { s.target = p.id; render(); screen.update(); };
        li.append(b);
      }
    }
    return li;
  }));
  $("asking").replaceChildren(...[...s.asking.values()].map((a) => {
    const box = el("div", "asking");
    box.append(el("div", "", `${a.name} asks to assist. Check code ${a.sas.slice(0, 3)} ${a.sas.slice(3)} with them.`));
    const ok = el("button", "btn small primary", "Admit");
    ok.onclick = () => { command({ cmd: "admit", peer: a.peer }); s.asking.delete(a.peer); render(); };
    const no = el("button", "btn small", "Refuse");
    no.onclick = () => { command({ cmd: "refuse", peer: a.peer }); s.asking.delete(a.peer); render(); };
    box.append(ok, no);
    return box;
  }));
  $("activity").replaceChildren(...s.activity.slice(-30).reverse().map((a) =>
    el("li", "", `${a.at.toLocaleTimeString()}  ${a.text}`)));

  // report
  $("report").hidden = !s.report && !ended;
  if (s.report) {
    $("report-text").textContent = `Signed log and activity report written (${s.report.id}).`;
    $("report-link").href = `/report?t=${encodeURIComponent(TOKEN)}&session=${s.sid}`;
    $("report-link").hidden = false;
  } else if (ended) {
    $("report-text").textContent = "The session has ended.";
    $("report-link").hidden = true;
  }
  for (const id of ["request-view", "request-control", "request-files", "request-sysinfo", "end-session",
    "chat-send", "file-send", "transfer-control", "note-save"]) $(id).disabled = ended;
  // actions only where they can act: someone to talk to, a customer to ask, a CSR to pass to
  const alone = !s.participants.some((p) => p.id !== s.me);
  $("chat-send").disabled = ended || alone;
  $("chat-input").placeholder = alone ? "Nobody has joined yet" : "Type a message…";
  const target = s.participants.find((p) => p.id === s.target);
  for (const cap of ["view", "control", "files", "sysinfo"]) {
    const st = capsOf(s)[cap];
    const b = $("request-" + cap);
    b.disabled = ended || !target || st === "pending" || st === "granted";
    b.textContent = st === "granted" ? `${REQUEST[cap]}: granted` : (st === "pending" ? `${REQUEST[cap]}: asked…` : `Request ${REQUEST[cap].toLowerCase()}`);
    const stop = $("release-" + cap);  // give it back: the customer's agent ends the grant
    stop.hidden = st !== "granted" || ended;
  }
  const mode = s.screenMode[s.target] || "sharp";
  for (const r of document.querySelectorAll('input[name="screen-mode"]')) {
    r.checked = r.value === mode;
    r.disabled = ended || capsOf(s).view !== "granted";  // the customer's agent refuses it otherwise
  }
  const otherCsrs = csrs.filter((p) => p.id !== s.me);
  $("transfer-control").disabled = ended || !(otherCsrs.length || (s.holder && s.holder !== s.me));
  $("file-send").disabled = ended || !s.participants.some((p) => p.role === "customer");
  // an assistant: no invitation; it asks the customer itself for the screen and system
  // information (control comes from the primary, by transfer); it leaves rather than ends
  const assistant = s.role === "assistant";
  $("card-invite").hidden = assistant;
  $("card-files").hidden = assistant;
  $("card-notes").hidden = assistant;
  for (const cap of ["control", "files"]) $("request-" + cap).disabled = ended || assistant;
  $("end-session").textContent = assistant ? "Leave session" : "End session";
  screen.update();
}

// what the customer being assisted granted (each customer answers for their own machine)
function capsOf(s) { return (s.target && s.caps[s.target]) || {}; }

function roleName(p) { return p.role === "csr" ? "CSR" : "customer"; }
const REQUEST = { view: "View", control: "Control", files: "Files", sysinfo: "System info" };

function fillSelect(select, options) {
  const keep = select.value;
  select.replaceChildren(...options.map(([v, t]) => { const o = el("option", "", t); o.value = v; return o; }));
  if (options.some(([v]) => v === keep)) select.value = keep;
}

function human(n) {
  if (n === undefined || n === null) return "?";
  const u = ["B", "KB", "MB", "GB"]; let i = 0; let v = n;
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(i ? 1 : 0)} ${u[i]}`;
}

let toastTimer = null;
function toast(text) {
  const t = $("toast"); t.textContent = text; t.hidden = false;
  clearTimeout(toastTimer); toastTimer = setTimeout(() => { t.hidden = true; }, 5000);
}

// -- the customer's screen ----------------------------------------------------------

const screen = {
  ws: null, key: "", frames: 0, lastFpsAt: performance.now(), size: null, decoder: null, ctx: null,
  vp8: false, noVp8: location.hash === "#jpeg", mode: "",
  async probe() {
    // the agent forwards the customer's VP8 frames when this browser can decode them
    try {
      this.vp8 = typeof VideoDecoder !== "undefined" &&
        (await VideoDecoder.isConfigSupported({ codec: "vp8" })).supported === true;
    } catch { this.vp8 = false; }
  },
  update() {
    const s = state.sessions.get(state.current);
    const want = s && !s.ended && s.target && capsOf(s).view === "granted" ? `${s.sid}/${s.target}` : "";
    $("screen-empty").hidden = !!want && !!this.size;
    $("screen-empty-text").textContent = s && s.ended ? "The session has ended. Its signed report is in the Session tab."
      : !s || !s.target ? "Waiting for the customer to join."
      : (capsOf(s).view === "granted" ? "Waiting for the first frame…" : "Request view to see the customer's screen.");
    if (want === this.key) return;
    this.close();
    this.key = want;
    if (!want) return;
    const [sid, peer] = want.split("/");
    this.mode = this.vp8 && !this.noVp8 ? "vp8" : "jpeg";
    const codec = this.mode === "vp8" ? "&codec=vp8" : "";
    const ws = new WebSocket(`ws://${location.host}/screen?t=${encodeURIComponent(TOKEN)}&session=${sid}&peer=${encodeURIComponent(peer)}${codec}`);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => this.sendFit();
    ws.onmessage = (m) => {
      if (typeof m.data === "string") {
        const msg = JSON.parse(m.data);
        if (msg.fallback) this.noVp8 = true;
        return;
      }
      this.frame(ws, m.data);
    };
    ws.onclose = () => { if (this.ws === ws) { this.ws = null; this.key = ""; setTimeout(() => this.update(), 300); } };
    this.ws = ws;
    $("screen").dataset.mode = this.mode;
  },
  sendFit() {
    // the agent scales JPEG frames down to what the canvas can show (device pixels)
    const fit = this.fit();
    if (this.ws && this.ws.readyState === WebSocket.OPEN && fit[0] > 0) this.ws.send(JSON.stringify({ fit }));
  },
  fit() {
    const wrap = $("screen-wrap"); const dpr = window.devicePixelRatio || 1;
    return [Math.round(wrap.clientWidth * dpr), Math.round(wrap.clientHeight * dpr)];
  },
  close() {
    if (this.ws) { const ws = this.ws; this.ws = null; ws.close(); }
    if (this.decoder && this.decoder.state !== "closed") this.decoder.close();
    this.decoder = null;
    this.size = null;
    $("fps").textContent = "";
  },
  frame(ws, data) {
    const view = new DataView(data);
    const kind = view.getUint8(0); const seq = view.getUint32(1);
    const body = new Uint8Array(data, 5);
    if (kind === 0) { this.jpeg(ws, seq, body); return; }
    if (!this.decoder || this.decoder.state === "closed") {
      if (kind !== 1) return; // a decoder starts at a keyframe
      this.decoder = new VideoDecoder({
        output: (f) => {
          // under load, only the newest decoded frame is drawn (and acknowledged)
          const ts = f.timestamp;
          if (this.decoder && this.decoder.decodeQueueSize > 0) { f.close(); return; }
          const t0 = performance.now();
          this.draw(f, f.displayWidth, f.displayHeight); f.close();
          this.shown(ws, ts, performance.now() - t0);
        },
        error: () => { this.decoder = null; if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ key: true })); },
      });
      this.decoder.configure({ codec: "vp8", optimizeForLatency: true });
    }
    try {
      this.decoder.decode(new EncodedVideoChunk({ type: kind === 1 ? "key" : "delta", timestamp: seq, data: body }));
    } catch {
      this.decoder = null; if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ key: true }));
    }
  },
  async jpeg(ws, seq, body) {
    const bitmap = await createImageBitmap(new Blob([body], { type: "image/jpeg" }));
    const t0 = performance.now();
    this.draw(bitmap, bitmap.width, bitmap.height);
    bitmap.close();
    this.shown(ws, seq, performance.now() - t0);
  },
  draw(source, w, h) {
    // drawn at its own size (the agent already scaled JPEG frames); CSS fits it on screen
    const c = $("screen");
    if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
    if (!this.ctx || this.ctx.canvas !== c) this.ctx = c.getContext("2d", { alpha: false });
    this.ctx.drawImage(source, 0, 0);
    if (!this.size) { this.size = [w, h]; $("screen-empty").hidden = true; }
  },
  shown(ws, seq, drawMs) {
    // drawMs: how long drawing the decoded frame took (the agent's benchmark splits it out)
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ shown: seq, draw_ms: drawMs }));
    const c = $("screen");
    this.frames++;
    const now = performance.now();
    if (now - this.lastFpsAt > 1000) {
      $("fps").textContent = `${this.size[0]}×${this.size[1]} · ${Math.round((this.frames * 1000) / (now - this.lastFpsAt))} fps`;
      this.frames = 0; this.lastFpsAt = now;
    }
    c.dataset.frames = String((Number(c.dataset.frames) || 0) + 1);
  },
};

function controlling() {
  const s = state.sessions.get(state.current);
  return s && !s.ended && s.holder && s.holder === s.me && screen.size;
}

function pointerAt(ev) {
  const c = $("screen"); const r = c.getBoundingClientRect();
  const clamp = (v) => Math.min(1, Math.max(0, v));
  return { x: clamp((ev.clientX - r.left) / r.width), y: clamp((ev.clientY - r.top) / r.height) };
}

const BUTTONS = ["left", "middle", "right"];
let lastMove = 0;
function setupInput() {
  const c = $("screen");
  const target = () => state.sessions.get(state.current).target;
  c.addEventListener("mousedown", (ev) => {
    if (!controlling()) return; ev.preventDefault(); c.focus();
    command({ cmd: "down", ...pointerAt(ev), button: BUTTONS[ev.button] || "left", to: target() });
  });
  c.addEventListener("mouseup", (ev) => {
    if (!controlling()) return; ev.preventDefault();
    command({ cmd: "up", ...pointerAt(ev), button: BUTTONS[ev.button] || "left", to: target() });
  });
  c.addEventListener("mousemove", (ev) => {
    if (!controlling()) return;
    const now = performance.now(); if (now - lastMove < 30) return; lastMove = now;
    command({ cmd: "move", ...pointerAt(ev), to: target() });
  });
  c.addEventListener("contextmenu", (ev) => { if (controlling()) ev.preventDefault(); });
  c.addEventListener("wheel", (ev) => {
    if (!controlling()) return; ev.preventDefault();
    const step = (d) => Math.max(-20, Math.min(20, Math.round(d / 100)));
    command({ cmd: "scroll", ...pointerAt(ev), dx: step(ev.deltaX), dy: step(ev.deltaY) || Math.sign(ev.deltaY), to: target() });
  }, { passive: false });
  const KEYS = { Enter: "enter", Tab: "tab", Escape: "escape", Backspace: "backspace", Delete: "delete",
    Insert: "insert", " ": "space", Shift: "shift", Control: "ctrl", Alt: "alt", Meta: "super",
    ArrowLeft: "left", ArrowRight: "right", ArrowUp: "up", ArrowDown: "down", Home: "home", End: "end",
    PageUp: "page_up", PageDown: "page_down", CapsLock: "caps_lock" };
  const keyName = (ev) => KEYS[ev.key] || (/^F([1-9]|1[0-2])$/.test(ev.key) ? ev.key.toLowerCase() : (ev.key.length === 1 ? ev.key : null));
  for (const [type, action] of [["keydown", "down"], ["keyup", "up"]]) {
    c.addEventListener(type, (ev) => {
      if (!controlling()) return;
      const key = keyName(ev); if (!key) return;
      ev.preventDefault();
      command({ cmd: "key", key, action, to: target() });
    });
  }
}

// -- wiring -----------------------------------------------------------------------

function current() { return state.sessions.get(state.current); }

function wire() {
  $("new-session").onclick = () => send({ op: "start" });
  $("start-first").onclick = () => send({ op: "start" });
  for (const tab of document.querySelectorAll(".tab")) {
    tab.onclick = () => {
      for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t === tab);
      for (const p of document.querySelectorAll(".pane")) p.hidden = p.dataset.pane !== tab.dataset.tab;
    };
  }
  $("copy-link").onclick = async () => {
    const s = current(); if (!s || !s.link) return;
    try { await navigator.clipboard.writeText(s.link); toast("Link copied"); }
    catch { $("invite-link").select(); toast("Press Ctrl+C to copy the link"); }
  };
  $("copy-web").onclick = async () => {
    const s = current(); if (!s || !s.web) return;
    try { await navigator.clipboard.writeText(s.web); toast("Web page copied"); }
    catch { $("invite-web").select(); toast("Press Ctrl+C to copy the web page"); }
  };
  $("copy-csr-code").onclick = async () => {
    const s = current(); if (!s) return;
    try { await navigator.clipboard.writeText(s.csrCode); toast(`Assistant code copied: ${s.csrCode}`); }
    catch { toast(`Assistant code: ${s.csrCode}`); }
  };
  $("chat-form").onsubmit = (ev) => {
    ev.preventDefault();
    const text = $("chat-input").value.trim(); if (!text) return;
    const to = $("chat-to").value;
    // our line shows once the agent sent it (it comes back as a status value)
    command(to ? { cmd: "chat", text, to: [to] } : { cmd: "chat", text });
    $("chat-input").value = "";
  };
  for (const cap of ["view", "control", "files", "sysinfo"]) {
    $("request-" + cap).onclick = () => { const s = current(); command({ cmd: "request", cap, to: s.target || undefined }); };
    const stop = el("button", "btn small", "Stop"); stop.id = "release-" + cap; stop.hidden = true;
    stop.title = "Stop using this; the customer can allow it again";
    stop.onclick = () => { const s = current(); command({ cmd: "release", cap, to: s.target || undefined }); };
    $("request-" + cap).after(stop);
  }
  $("file-send").onclick = async () => {
    const s = current(); const file = $("file-input").files[0];
    if (!s || !file) { toast("Choose a file first"); return; }
    const to = $("file-to").value;
    const q = `t=${encodeURIComponent(TOKEN)}&session=${s.sid}&name=${encodeURIComponent(file.name)}` + (to ? `&to=${encodeURIComponent(to)}` : "");
    const r = await fetch(`/api/upload?${q}`, { method: "POST", body: file });
    if (!r.ok) { const body = await r.json().catch(() => ({})); toast(body.error || `Upload failed (${r.status})`); }
  };
  $("note-save").onclick = () => {
    const text = $("note-input").value.trim(); if (!text || !state.current) return;
    send({ op: "note", session: state.current, text }); $("note-input").value = "";
  };
  for (const r of document.querySelectorAll('input[name="screen-mode"]')) {
    r.onchange = () => { const s = current(); if (s && s.target) command({ cmd: "screen_mode", mode: r.value, to: s.target }); };
  }
  $("transfer-control").onclick = () => { const to = $("transfer-to").value; if (to) command({ cmd: "transfer_control", to }); };
  $("end-session").onclick = () => { const s = current(); command({ cmd: s && s.role === "assistant" ? "leave" : "end" }); };
  const openJoin = () => { $("join-dialog").hidden = false; $("join-code").focus(); };
  $("join-assistant").onclick = openJoin;
  $("join-cancel").onclick = () => { $("join-dialog").hidden = true; };
  $("join-form").onsubmit = (ev) => {
    ev.preventDefault();
    const code = $("join-code").value.trim(); if (!code) return;
    send({ op: "join", code }); $("join-dialog").hidden = true; $("join-code").value = "";
  };
  if (location.hash === "#join") openJoin();
  setupInput();
}

// the file target select lives beside the file input
(function addFileTo() {
  const sel = el("select"); sel.id = "file-to"; sel.title = "Send to";
  $("file-send").before(sel);
})();
window.addEventListener("resize", () => screen.sendFit());
wire();
screen.probe().finally(connect);
render();
