// posgate technician page: renders /page/state, follows /page/events, sends CSRF-safe actions.
"use strict";
const csrf = document.querySelector('meta[name="csrf"]').content;

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(k == null ? "" : String(k)));
  return e;
}

function table(head, rows) {
  return el("table", {}, el("tr", {}, ...head.map((h) => el("th", {}, h))), ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", {}, c)))));
}

function say(text) { document.getElementById("msg").textContent = text; }

async function act(path, body) {
  const r = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: JSON.stringify(body || {}),
  });
  const v = await r.json().catch(() => ({}));
  if (!r.ok) { say("refused: " + (v.detail || r.status)); return null; }
  return v;
}

function reversalRow(rec) {
  const parked = rec.recovery && rec.recovery.parked;
  const id = rec.id;
  const done = (what) => (v) => { if (v) { say(`record ${id} ${what}: ${v.status}`); refresh(); } };
  return [
    id, rec.profile, rec.operation, rec.trace, rec.batch, parked ? "parked (needs attention)" : "owed",
    rec.recovery ? rec.recovery.attempts : "", rec.recovery ? (rec.recovery.last_error || "") : "",
    el("span", {},
      el("button", { id: `retry-${id}`, onclick: () => act(`/page/reversals/${id}/retry`).then(done("retried")) }, "Retry"),
      el("button", { id: `approve-${id}`, onclick: () => act(`/page/reversals/${id}/resolve`, { outcome: "approved" }).then(done("resolved")) }, "Resolve: approved"),
      el("button", { id: `reverse-${id}`, onclick: () => act(`/page/reversals/${id}/resolve`, { outcome: "reversed" }).then(done("resolved")) }, "Resolve: reversed")),
  ];
}

function render(s) {
  const st = s.status;
  document.getElementById("version").textContent = `v${st.version}, up ${Math.round(st.uptime_ms / 1000)} s, ${st.journal.syncs} group commits`;
  const profiles = st.profiles.map((p) => [
    p.name, p.backend, p.batch || "", p.batch_open ? "open" : "closed", p.trace, p.online ? "yes" : "no",
    p.pending_recovery, p.needs_attention, (p.unsettled_batches || []).join(", "), JSON.stringify(p.totals || {}),
  ]);
  document.getElementById("profiles").replaceChildren(table(["profile", "backend", "batch", "state", "trace", "online", "owed", "parked", "unsettled batches", "batch totals"], profiles));
  const rev = s.reversals.map(reversalRow);
  document.getElementById("reversals").replaceChildren(rev.length ? table(["id", "profile", "operation", "trace", "batch", "state", "attempts", "last error", ""], rev) : "none");
  document.getElementById("checks").replaceChildren(el("ul", {}, ...s.checks.map((c) => el("li", { class: c.level }, `${c.level}: ${c.text}`))));
  const dev = (st.devices || []).map((d) => [d.device, d.state, d.detail || d.path || ""]);
  document.getElementById("devices").replaceChildren(dev.length ? table(["device", "state", "detail"], dev) : "no device has reported yet");
  const j = s.journal.map((r) => [r.id, r.created_at, r.profile, r.operation, r.status, r.trace, r.batch, JSON.stringify(r.request || {})]);
  document.getElementById("journal").replaceChildren(table(["id", "created", "profile", "operation", "status", "trace", "batch", "request (masked)"], j));
  const log = document.getElementById("log");
  log.textContent = s.log.join("\n");
  log.scrollTop = log.scrollHeight;
}

async function refresh() {
  const r = await fetch("/page/state", { credentials: "same-origin" });
  if (r.status === 401) { location.reload(); return; }
  if (r.ok) render(await r.json());
}

function live() {
  const raw = document.getElementById("raw");
  const add = (line) => {
    raw.textContent = (raw.textContent + line + "\n").split("\n").slice(-200).join("\n");
    raw.scrollTop = raw.scrollHeight;
  };
  const es = new EventSource("/page/events");
  es.addEventListener("raw", (e) => { const v = JSON.parse(e.data); add(`${v.device} ${v.len} B → ${v.decoded}\n  hex: ${v.hex}\n  text: ${v.text}`); });
  es.addEventListener("scan", (e) => { const v = JSON.parse(e.data); add(`scan ${v.device}: ${v.kind} ${v.symbology || ""} ${v.text}`); });
  es.addEventListener("device", (e) => { const v = JSON.parse(e.data); add(`device ${v.device}: ${v.state}`); refresh(); });
  es.addEventListener("recovery", () => refresh());
}

document.getElementById("signout").addEventListener("click", () => act("/page/signout").then(() => location.reload()));
refresh();
live();
setInterval(refresh, 3000);

document.getElementById("run-doctor").addEventListener("click", async () => {
  const out = document.getElementById("doctor");
  out.textContent = "running…";
  const v = await act("/page/doctor");
  if (!v) { out.textContent = ""; return; }
  out.replaceChildren(el("ul", { id: "doctor-list" }, ...v.checks.map((c) => el("li", { class: c.level }, `${c.level}: ${c.text}`))));
});
