// zpxe's live page. Everything a client sent (MACs, stages, file names, details) reaches the
// DOM through textContent only: no markup is ever built from data.
"use strict";

const BOOTING_WINDOW_MS = 120000;
const ERRORS_KEPT = 50;
const GRAPH_POINTS = 300;
const ROWS = 200;

const state = {
  machines: new Map(),
  transfers: new Map(),
  errors: [],
  graph: [],
  stages: {},
  legs: {},
  status: null,
};

function byId(id) {
  return document.getElementById(id);
}

// An element with text children (strings) or element children.
function el(tag, cls, ...children) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + units[i];
}

function when(ms) {
  if (!ms) return "";
  return new Date(ms).toLocaleTimeString();
}

function bar(done, total) {
  const p = document.createElement("progress");
  if (total !== null && total !== undefined && total > 0) {
    p.max = total;
    p.value = Math.min(done || 0, total);
    p.title = bytes(done) + " of " + bytes(total);
  } else {
    p.title = bytes(done);
  }
  return p;
}

function replaceRows(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// ---------------------------------------------------------------------------------------------
// The model, from /api/v1/status and from events

function machineKey(mac, ip) {
  return mac || ip || "unknown";
}

function applyStatus(s) {
  state.status = s;
  state.machines = new Map();
  for (const m of s.machines || []) state.machines.set(m.key, m);
  state.transfers = new Map();
  for (const t of s.transfers || []) state.transfers.set(t.id, t);
  state.errors = (s.errors || []).slice(0, ERRORS_KEPT);
  state.graph = (s.graph || []).slice(-GRAPH_POINTS);
  state.stages = s.stages || {};
  state.legs = s.legs || {};
}

function touchMachine(mac, ip, at) {
  const key = machineKey(mac, ip);
  let m = state.machines.get(key);
  if (!m) {
    m = { key, mac: mac || null, ip: ip || null, leg: "", stage: "", detail: "", file: null,
          done: 0, total: null, first_ms: at, last_ms: at };
    state.machines.set(key, m);
  }
  if (ip) m.ip = ip;
  if (mac) m.mac = mac;
  m.last_ms = Math.max(m.last_ms || 0, at || 0);
  return m;
}

const KIND_STAGE = { "dhcp-offer": "dhcp", "ipxe-dhcp": "ipxe", "pxe-ack": "pxe" };

function applyFrame(f) {
  switch (f.type) {
    case "boot": {
      const legs = state.legs[f.leg] || (state.legs[f.leg] = { events: 0, started: 0, ok: 0, failed: 0, bytes: 0 });
      legs.events++;
      if (f.kind === "error" && !f.mac) break;
      const m = touchMachine(f.mac, f.ip, f.at_ms);
      m.leg = f.leg;
      if (f.stage) m.stage = f.stage;
      else if (f.kind !== "error") m.stage = KIND_STAGE[f.kind] || f.leg;
      if (f.detail) m.detail = f.detail;
      if (f.file && f.bytes !== null && f.bytes !== undefined) {
        m.file = f.file;
        m.done = f.bytes;
        m.total = f.bytes;
      }
      if (f.stage) scheduleStatus();
      break;
    }
    case "progress": {
      state.transfers.set(f.id, f);
      const ip = f.remote.replace(/:\d+$/, "").replace(/^\[|\]$/g, "");
      const m = touchMachine(f.mac, ip, Date.now());
      m.leg = f.leg;
      m.stage = f.leg;
      m.file = f.file;
      m.done = f.done;
      m.total = f.total;
      break;
    }
    case "done":
      state.transfers.delete(f.id);
      break;
    case "error":
      state.errors.unshift(f);
      state.errors.length = Math.min(state.errors.length, ERRORS_KEPT);
      break;
    case "sample":
      state.graph.push(f);
      if (state.graph.length > GRAPH_POINTS) state.graph.splice(0, state.graph.length - GRAPH_POINTS);
      break;
  }
  scheduleRender();
}

// ---------------------------------------------------------------------------------------------
// Rendering

let renderTimer = null;
function scheduleRender() {
  if (renderTimer === null) renderTimer = setTimeout(render, 200);
}

function render() {
  renderTimer = null;
  const s = state.status;
  if (s) {
    const server = s.server || {};
    const services = Object.keys(server.services || {}).join(", ");
    byId("summary").textContent = "version " + s.version + ", up " + s.uptime_s + " s" +
      (server.io_driver ? ", I/O " + server.io_driver : "") +
      (services ? ", serving " + services : "") +
      (s.database ? ", database " + s.database : ", database off");
  }
  renderMachines();
  renderTransfers();
  renderStages();
  renderErrors();
  renderGraph();
}

function renderMachines() {
  const now = Date.now();
  const list = [...state.machines.values()]
    .filter((m) => now - (m.last_ms || 0) <= BOOTING_WINDOW_MS)
    .sort((a, b) => (b.last_ms || 0) - (a.last_ms || 0));
  byId("booting-count").textContent = String(list.length);
  const rows = list.slice(0, ROWS).map((m) => {
    const tr = el("tr", "machine",
      el("td", "mac", m.mac || m.key),
      el("td", null, m.ip || ""),
      el("td", null, m.leg || ""),
      el("td", m.stage === "failed" ? "stage failed" : "stage", m.stage || ""),
      el("td", "detail", m.file || m.detail || ""),
      el("td", null, m.file ? bar(m.done, m.total) : ""),
      el("td", null, when(m.last_ms)));
    return tr;
  });
  replaceRows(document.querySelector("#machines tbody"), rows);
}

function renderTransfers() {
  const list = [...state.transfers.values()].sort((a, b) => (b.started_ms || 0) - (a.started_ms || 0));
  byId("transfer-count").textContent = String(list.length);
  const rows = list.slice(0, ROWS).map((t) => el("tr", "transfer",
    el("td", null, t.leg),
    el("td", null, t.remote),
    el("td", "mac", t.mac || ""),
    el("td", "detail", t.file),
    el("td", null, bar(t.done, t.total)),
    el("td", "num", bytes(t.rate) + "/s")));
  replaceRows(document.querySelector("#transfers tbody"), rows);
}

function renderStages() {
  const items = Object.entries(state.stages)
    .sort((a, b) => b[1] - a[1])
    .map(([stage, n]) => el("li", "stage-count", el("b", null, String(n)), stage));
  byId("stages").replaceChildren(...items);
  const legs = Object.entries(state.legs).sort().map(([leg, c]) => el("tr", null,
    el("td", null, leg),
    el("td", "num", String(c.events)),
    el("td", "num", String(c.started)),
    el("td", "num", String(c.ok)),
    el("td", "num", String(c.failed)),
    el("td", "num", bytes(c.bytes))));
  replaceRows(document.querySelector("#legs tbody"), legs);
}

function renderErrors() {
  const rows = state.errors.map((e) => el("tr", "error",
    el("td", null, when(e.at_ms)),
    el("td", "mac", e.mac || ""),
    el("td", null, e.ip || ""),
    el("td", null, e.leg),
    el("td", "reason", e.reason)));
  replaceRows(document.querySelector("#errors tbody"), rows);
}

const SVG = "http://www.w3.org/2000/svg";

function renderGraph() {
  const svg = byId("graph");
  const pts = state.graph;
  const max = Math.max(1, ...pts.map((p) => p.tftp_bps + p.http_bps));
  const line = (cls, value) => {
    const pl = document.createElementNS(SVG, "polyline");
    pl.setAttribute("class", cls);
    const n = pts.length;
    const coords = pts.map((p, i) => {
      const x = n <= 1 ? 600 : (600 * i) / (GRAPH_POINTS - 1) + 600 * (GRAPH_POINTS - n) / (GRAPH_POINTS - 1);
      const y = 118 - (116 * value(p)) / max;
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    pl.setAttribute("points", coords.join(" "));
    return pl;
  };
  svg.replaceChildren(line("tftp", (p) => p.tftp_bps), line("http", (p) => p.http_bps));
  const last = pts.length ? pts[pts.length - 1] : null;
  byId("rate").textContent = last ? bytes(last.tftp_bps + last.http_bps) + "/s" : "0 B/s";
  byId("graph-max").textContent = "peak " + bytes(max) + "/s over " + pts.length + " s";
}

// ---------------------------------------------------------------------------------------------
// Status and events

let statusTimer = null;
function scheduleStatus() {
  if (statusTimer === null) statusTimer = setTimeout(loadStatus, 2000);
}

async function loadStatus() {
  statusTimer = null;
  try {
    const r = await fetch("/api/v1/status", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    applyStatus(await r.json());
    render();
  } catch (e) {
    byId("summary").textContent = "status unavailable: " + e.message;
  }
}

let source = null;
function openEvents() {
  if (!window.EventSource) return;
  source = new EventSource("/api/v1/events");
  const conn = byId("conn");
  source.onopen = () => {
    conn.textContent = "live";
    conn.className = "conn on";
  };
  source.onerror = () => {
    conn.textContent = "reconnecting";
    conn.className = "conn off";
  };
  source.onmessage = (e) => {
    try {
      applyFrame(JSON.parse(e.data));
    } catch (err) {
      // A frame the page does not understand: skip it.
    }
  };
  // Frames were missed: start again from the status.
  source.addEventListener("lagged", () => loadStatus());
}

// ---------------------------------------------------------------------------------------------
// History by MAC

async function search(ev) {
  ev.preventDefault();
  const out = byId("history-result");
  const mac = byId("mac").value.trim();
  if (!mac) return;
  out.replaceChildren(el("p", null, "searching"));
  try {
    const r = await fetch("/api/v1/clients/" + encodeURIComponent(mac), { cache: "no-store" });
    if (r.status === 404) {
      out.replaceChildren(el("p", null, "no boots recorded for " + mac));
      return;
    }
    if (!r.ok) {
      out.replaceChildren(el("p", "failed", "search failed: HTTP " + r.status + " " + (await r.text())));
      return;
    }
    const c = await r.json();
    const parts = [el("p", null, c.mac + ": " + c.boots.length + " boots")];
    for (const b of c.boots) {
      parts.push(el("h3", null, "boot " + b.id + ", " + when(b.started_ms) + ", stage " + b.stage +
        (b.outcome ? ", " + b.outcome : "")));
      const rows = b.events.map((e) => el("tr", null,
        el("td", null, when(e.at_ms)),
        el("td", null, e.kind),
        el("td", "detail", e.name || ""),
        el("td", "detail", e.detail || ""),
        el("td", "num", e.bytes === null || e.bytes === undefined ? "" : bytes(e.bytes)),
        el("td", null, e.outcome || (e.status ? String(e.status) : ""))));
      parts.push(el("table", "event-list", el("tbody", null, ...rows)));
    }
    out.replaceChildren(...parts);
  } catch (e) {
    out.replaceChildren(el("p", "failed", "search failed: " + e.message));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  byId("search").addEventListener("submit", search);
  loadStatus().then(openEvents);
  // A full refresh now and then: counts by stage come from the database.
  setInterval(loadStatus, 10000);
});
