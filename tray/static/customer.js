// PeerDesk customer page: prompts, indicator, Stop. Everything from the session is shown
// with textContent only.
"use strict";

const TOKEN = document.querySelector('meta[name="peerdesk-token"]').content;
const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};
const WHAT = {
  view: "see your screen",
  control: "control your mouse and keyboard",
  files: "send you files",
  files_advanced: "browse and copy files in a folder you choose",
  sysinfo: "see basic information about this computer",
};
const s = { csr: null, csrId: null, sas: "", me: "", prompts: new Map(), grants: {}, holder: null,
  chat: [], offers: new Map(), ended: false, endedWhy: "", names: {}, received: [] };
let ws = null;

function connect() {
  ws = new WebSocket(`ws://${location.host}/ws?t=${encodeURIComponent(TOKEN)}`);
  ws.onmessage = (m) => onMessage(JSON.parse(m.data));
  ws.onclose = () => { if (!s.ended) { toast("Lost the connection to PeerDesk"); } };
}
function send(obj) { if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj)); }

function onMessage(msg) {
  if (msg.type === "hello") { $("warning").hidden = !msg.warn; return; }
  if (msg.type === "warning_seen") { $("warning").hidden = true; return; }
  if (msg.type === "error") { toast(msg.reason); return; }
  if (msg.type === "status") { apply(msg.event); render(); }
}

function apply(e) {
  switch (e.event) {
    case "joined":
      s.me = e.me; s.names[e.peer] = e.name;
      if (e.role === "csr" && (e.sas || !s.csr)) { s.csr = e.name; s.csrId = e.peer; s.sas = e.sas || s.sas; }
      break;
    case "roster": for (const p of e.participants) s.names[p.id] = p.name; break;
    case "request": s.prompts.set(e.id, e); break;
    case "consent":
      s.grants[e.cap] = e.state;
      if (e.state !== "pending") s.prompts.delete(e.id);
      if (e.cap === "control" && e.state !== "granted") s.holder = null;
      break;
    case "control": s.holder = e.holder; break;
    case "chat": s.chat.push({ name: e.name, text: e.text, mine: !!s.me && e.from === s.me }); break;
    case "file":
      if (e.state === "offered") s.offers.set(e.id, e); else s.offers.delete(e.id);
      if (e.state === "done" && e.direction === "receive") {
        s.received.push(e); toast(`Received ${e.name}: saved in ${folderOf(e.path)}`);
      }
      break;
    case "ended": if (!s.ended) { s.ended = true; s.endedWhy = e.reason; } break;
    case "left": if (e.peer === s.me) { s.ended = true; s.endedWhy = "you_left"; } break;
    case "error": toast(e.reason); break;
    default: break;
  }
}

function render() {
  $("csr-name").replaceChildren(document.createTextNode(s.csr || ""));
  if (s.csr && s.sas) $("csr-name").append(el("span", "verified", "✔ verified"));
  $("csr-initial").textContent = (s.csr || "?").slice(0, 1).toUpperCase();
  document.querySelector(".who .label").textContent = s.ended
    ? (s.csr ? "You were connected to" : "Not connected")
    : (s.csr ? "You are connected to" : "Connecting…");
  $("sas-box").hidden = !s.sas;
  $("sas").textContent = s.sas ? `${s.sas.slice(0, 3)} ${s.sas.slice(3)}` : "";

  const prompts = [...s.prompts.values()].map((p) => {
    const box = el("div", "prompt"); box.dataset.id = p.id; box.dataset.cap = p.cap;
    box.append(el("h3", "", `${p.name} asks to ${WHAT[p.cap] || p.cap}`));
    box.append(el("p", "", s.sas ? `Verified with check code ${s.sas.slice(0, 3)} ${s.sas.slice(3)}.` : ""));
    box.append(el("p", "hint", "You can stop this at any time with Stop sharing."));
    const row = el("div", "row");
    const deny = el("button", "btn deny", "Deny"); deny.onclick = () => { send({ op: "answer", id: p.id, yes: false }); };
    const allow = el("button", "btn primary allow", "Allow"); allow.onclick = () => { send({ op: "answer", id: p.id, yes: true }); };
    row.append(deny, allow); box.append(row);
    return box;
  });
  const offers = [...s.offers.values()].map((f) => {
    const box = el("div", "prompt"); box.dataset.id = f.id;
    box.append(el("h3", "", `${s.csr || "The CSR"} wants to send you ${f.name}`));
    box.append(el("p", "", human(f.size)));
    const row = el("div", "row");
    const no = el("button", "btn", "Decline"); no.onclick = () => send({ op: "file", id: f.id, yes: false });
    const yes = el("button", "btn primary", "Accept"); yes.onclick = () => send({ op: "file", id: f.id, yes: true });
    row.append(no, yes); box.append(row);
    return box;
  });
  $("prompts").replaceChildren(...prompts, ...offers);

  const granted = Object.entries(s.grants).filter(([, st]) => st === "granted").map(([cap]) => cap);
  $("grants").replaceChildren(...(granted.length
    ? granted.map((cap) => el("li", "", `${s.csr || "The CSR"} can ${WHAT[cap] || cap}`))
    : [el("li", "none", "Nothing yet: every request asks you first.")]));

  const controlled = !s.ended && s.holder !== null && s.holder !== undefined;
  const viewed = !s.ended && s.grants.view === "granted";
  const ind = $("indicator");
  ind.hidden = !(controlled || viewed);
  ind.classList.toggle("controlled", controlled);
  const who = controlled ? (s.names[s.holder] || s.csr || "Someone") : (s.csr || "Someone");
  $("indicator-text").textContent = controlled
    ? `${who} is CONTROLLING this computer`
    : `${who} can see your screen`;
  document.title = controlled ? "● Controlled — PeerDesk" : (viewed ? "● Screen shared — PeerDesk" : "PeerDesk — Remote support");

  $("chat-log").replaceChildren(...s.chat.map((c) => {
    const line = el("div", "msg" + (c.mine ? " mine" : ""));
    line.append(el("span", "who", c.mine ? "You" : c.name), el("div", "text", c.text));
    return line;
  }));
  $("ended").hidden = !s.ended;
  const [title, text] = ENDED[s.endedWhy] || (s.endedWhy.startsWith("lost") ? ENDED.lost : ENDED.ended);
  $("ended-title").textContent = title; $("ended-text").textContent = text;
  document.body.classList.toggle("session-over", s.ended);
  for (const id of ["leave", "chat-input", "chat-send", "stop"]) $(id).disabled = s.ended;
  if (s.ended) { $("chat-input").placeholder = "The session is over"; $("prompts").replaceChildren(); }
  $("files-card").hidden = !s.received.length;
  $("received").replaceChildren(...s.received.map((f) => {
    const li = el("li", "file");
    li.append(el("div", "fname", `${f.name} (${human(f.size)})`));
    li.append(el("div", "hint", `Saved as ${f.path}`));
    const open = el("button", "btn small", "Show in folder");
    open.onclick = () => send({ op: "open_folder", id: f.id });
    li.append(open);
    return li;
  }));
}

const ENDED = {
  you_left: ["You left the session", "Nobody can see or control this computer any more. You can close this page."],
  ended: ["The support representative ended the session", "Nobody can see or control this computer any more. You can close this page."],
  replaced: ["You joined again from another window", "This page is no longer connected; the other one is."],
  stopped: ["PeerDesk was stopped", "Nobody can see or control this computer any more."],
  lost: ["The connection to the support representative was lost", "Nobody can see or control this computer any more. If you still need help, ask for a new code."],
};

function human(n) {
  if (n === undefined || n === null) return "?";
  const u = ["B", "KB", "MB", "GB"]; let i = 0; let v = n;
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(i ? 1 : 0)} ${u[i]}`;
}
function folderOf(path) { return (path || "").replace(/[\\/][^\\/]*$/, "") || path; }

let toastTimer = null;
function toast(text) {
  const t = $("toast"); t.textContent = text; t.hidden = false;
  clearTimeout(toastTimer); toastTimer = setTimeout(() => { t.hidden = true; }, 5000);
}

$("stop").onclick = () => send({ op: "stop" });
$("leave").onclick = () => send({ op: "leave" });
$("warning-ok").onclick = () => send({ op: "warning_seen" });
$("warning-leave").onclick = () => { send({ op: "leave" }); $("warning").hidden = true; };
$("chat-form").onsubmit = (ev) => {
  ev.preventDefault();
  const text = $("chat-input").value.trim(); if (!text) return;
  send({ op: "chat", text }); $("chat-input").value = "";  // it comes back once sent
};
connect();
render();
