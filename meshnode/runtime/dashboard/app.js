// The meshnode dashboard: one event stream per page (a snapshot, then deltas), rendered
// in batches, one animation frame at a time, touching only what changed. Every string
// that came from the mesh is written with textContent (never as markup).
"use strict";

const TOKEN_KEY = "meshnode.api_token";
const RETRY_MAX_MS = 15000;       // longest wait between two reconnections
const SEARCH_DEBOUNCE_MS = 250;   // pause in typing before a discovery runs
const TRUST_POINTS_MAX = 120;     // trust values this page remembers per peer
const GRAPH_SIZE = 600;
const GRAPH_RIM = 270;            // radius of a 1 s (or unknown) round-trip time
const GRAPH_HUB = 40;             // radius of a 0 ms round-trip time
const SVG_NS = "http://www.w3.org/2000/svg";
const GRAPH_LABELS_MAX = 40;      // members named on the graph (beyond it: hover for names)

const model = {
  seq: -1,
  node: null,
  metrics: null,
  members: new Map(),
  trust: new Map(),
  trustSeen: new Map(),   // node_id -> [[unix_s, trust]] seen by this page
  capabilities: null,
  tasks: null,
};
const dirty = { members: new Set(), trust: new Set(), sections: new Set(), all: false };
const rows = { members: new Map(), trust: new Map() };
const graph = { nodes: new Map(), edges: new Map(), labels: new Map() };
const stats = { events: 0, renders: 0, lastRenderMs: 0, mutatedRows: 0 };
let frameQueued = false;
let source = null;
let retryMs = 1000;

function $(id) { return document.getElementById(id); }

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function shortId(id) { return String(id || "").slice(0, 10); }

function fmtTime(unix) {
  if (typeof unix !== "number") return "";
  return new Date(unix * 1000).toLocaleTimeString();
}

// ---------------------------------------------------------------- access

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const t = token();
  if (t) h.Authorization = "Bearer " + t;
  return h;
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const resp = await fetch(path, opts);
  if (resp.status === 401) showAuth("this node needs its API token");
  return resp;
}

function showAuth(message) {
  $("auth").hidden = false;
  $("auth-error").textContent = message || "";
}

function saveToken() {
  const value = $("token").value.trim();
  if (!value) return;
  sessionStorage.setItem(TOKEN_KEY, value);
  $("token").value = "";
  $("auth").hidden = true;
  connect();
}

// ---------------------------------------------------------------- the stream

function setConn(state) {
  const c = $("conn");
  c.textContent = state;
  c.className = "badge " + state;
}

async function connect() {
  if (source) { source.close(); source = null; }
  setConn("connecting");
  let resp;
  try {
    resp = await api("/v1/events/ticket", { method: "POST" });
  } catch (err) {
    return retry();
  }
  if (resp.status === 401) { setConn("offline"); return; }
  if (!resp.ok) return retry();
  const body = await resp.json();
  source = new EventSource("/v1/events?ticket=" + encodeURIComponent(body.ticket));
  source.addEventListener("snapshot", (e) => applySnapshot(JSON.parse(e.data)));
  source.addEventListener("delta", (e) => applyDelta(JSON.parse(e.data)));
  source.onopen = () => { setConn("live"); retryMs = 1000; };
  source.onerror = () => {
    if (source) source.close();
    source = null;
    retry();
  };
}

function retry() {
  setConn("offline");
  setTimeout(connect, retryMs);
  retryMs = Math.min(RETRY_MAX_MS, retryMs * 2);
}

// ---------------------------------------------------------------- model updates

function upsertMembers(list) {
  for (const m of list || []) { model.members.set(m.node_id, m); dirty.members.add(m.node_id); }
}

function upsertTrust(list, at) {
  for (const t of list || []) {
    model.trust.set(t.node_id, t);
    dirty.trust.add(t.node_id);
    let seen = model.trustSeen.get(t.node_id);
    if (!seen) { seen = []; model.trustSeen.set(t.node_id, seen); }
    seen.push([at, t.trust]);
    if (seen.length > TRUST_POINTS_MAX) seen.splice(0, seen.length - TRUST_POINTS_MAX);
  }
}

function applySnapshot(s) {
  stats.events += 1;
  model.seq = s.seq;
  model.members.clear();
  model.trust.clear();
  model.trustSeen.clear();
  upsertMembers(s.members);
  upsertTrust(s.trust, Date.now() / 1000);
  for (const key of ["node", "metrics", "capabilities", "tasks"]) {
    model[key] = s[key] === undefined ? null : s[key];
    dirty.sections.add(key);
  }
  dirty.all = true;
  schedule();
}

function applyDelta(d) {
  stats.events += 1;
  if (typeof d.seq === "number") {
    if (d.seq <= model.seq) return;  // already in the snapshot
    model.seq = d.seq;
  }
  const now = Date.now() / 1000;
  if (d.members) {
    for (const id of d.members.remove || []) { model.members.delete(id); dirty.members.add(id); }
    upsertMembers(d.members.upsert);
  }
  if (d.trust) {
    for (const id of d.trust.remove || []) {
      model.trust.delete(id);
      model.trustSeen.delete(id);
      dirty.trust.add(id);
    }
    upsertTrust(d.trust.upsert, now);
  }
  for (const key of ["node", "metrics", "capabilities", "tasks"]) {
    if (d[key] !== undefined) { model[key] = d[key]; dirty.sections.add(key); }
  }
  schedule();
}

function schedule() {
  if (frameQueued) return;
  frameQueued = true;
  requestAnimationFrame(() => { frameQueued = false; render(); });
}

// ---------------------------------------------------------------- rendering

function render() {
  const started = performance.now();
  if (dirty.all) {
    for (const id of rows.members.keys()) if (!model.members.has(id)) dirty.members.add(id);
    for (const id of rows.trust.keys()) if (!model.trust.has(id)) dirty.trust.add(id);
    dirty.all = false;
  }
  if (dirty.members.size) renderMembers(dirty.members);
  if (dirty.trust.size) renderTrust(dirty.trust);
  dirty.members = new Set();
  dirty.trust = new Set();
  for (const key of dirty.sections) {
    if (key === "node") renderNode();
    else if (key === "metrics") renderMetrics();
    else if (key === "capabilities") renderCapabilities();
    else if (key === "tasks") renderTasks();
  }
  dirty.sections.clear();
  stats.renders += 1;
  stats.lastRenderMs = performance.now() - started;
}

function renderNode() {
  const n = model.node;
  if (!n) return;
  $("node-name").textContent = n.name;
  $("node-id").textContent = n.node_id;
  const badge = $("node-status");
  badge.textContent = n.status + " · health " + n.local_health;
  badge.className = "badge " + (n.status === "ok" ? "ok" : "degraded");
  const reasons = $("reasons");
  reasons.replaceChildren(...(n.reasons || []).map((r) => el("li", r)));
}

function renderMetrics() {
  const m = model.metrics;
  if (!m) return;
  const items = [
    ["alive", m.members.alive], ["suspect", m.members.suspect],
    ["dead", m.members.dead], ["left", m.members.left],
    ["manifests", m.manifests], ["ledger records", m.ledger_records],
    ["tasks in flight", m.tasks_in_flight], ["delegations ok", m.delegations_ok],
    ["delegations failed", m.delegations_failed], ["tasks served", m.tasks_served],
    ["drops", m.drops], ["connections", m.connections],
    ["local health", model.node ? model.node.local_health : ""],
  ];
  $("metrics").replaceChildren(...items.map(([k, v]) => {
    const div = el("div");
    div.dataset.metric = k;
    div.append(el("dt", k), el("dd", v));
    return div;
  }));
  $("member-count").textContent = "(" + model.members.size + ")";
}

function memberRow(m) {
  const tr = el("tr");
  tr.dataset.nodeId = m.node_id;
  for (const cls of ["id", "name", "address", "state", "rtt", "load"]) tr.append(el("td", "", cls));
  return tr;
}

function fillMemberRow(tr, m) {
  const c = tr.children;
  const values = [shortId(m.node_id), m.name || "-", m.address, m.state,
    m.rtt_ms === null || m.rtt_ms === undefined ? "?" : m.rtt_ms, m.load === null ? "-" : m.load];
  for (let i = 0; i < values.length; i++) {
    const text = String(values[i]);
    if (c[i].textContent !== text) c[i].textContent = text;
  }
  const cls = "state-" + m.state + (m.self ? " self" : "");
  if (tr.className !== cls) tr.className = cls;
  tr.title = m.node_id;
}

function renderMembers(ids) {
  const body = $("members").tBodies[0];
  const fresh = document.createDocumentFragment();
  let known = 0;
  for (const id of ids) {
    const m = model.members.get(id);
    let tr = rows.members.get(id);
    if (!m) {
      if (tr) { tr.remove(); rows.members.delete(id); }
      removeGraphNode(id);
      continue;
    }
    if (!tr) { tr = memberRow(m); rows.members.set(id, tr); fresh.append(tr); }
    fillMemberRow(tr, m);
    drawGraphNode(m);
    stats.mutatedRows += 1;
  }
  body.append(fresh);
  for (const m of model.members.values()) if (typeof m.rtt_ms === "number") { known = 1; break; }
  $("graph-note").textContent = known ? "" : "No round-trip time is known yet: edges are drawn dashed at the rim.";
  $("member-count").textContent = "(" + model.members.size + ")";
}

// ---------------------------------------------------------------- graph

function angleOf(id) {
  // FNV-1a of the node id: a member keeps its place when others come and go.
  let h = 0x811c9dc5;
  for (let i = 0; i < id.length; i++) { h ^= id.charCodeAt(i); h = Math.imul(h, 0x01000193) >>> 0; }
  return (h / 4294967296) * 2 * Math.PI;
}

function radiusOf(m) {
  if (typeof m.rtt_ms !== "number") return GRAPH_RIM;
  // Log scale: 0.1 ms is one decade from the hub, 1 s (and beyond) at the rim.
  const scaled = Math.log10(1 + Math.max(0, m.rtt_ms) / 0.1) / Math.log10(1 + 1000 / 0.1);
  return GRAPH_HUB + (GRAPH_RIM - GRAPH_HUB) * Math.min(1, scaled);
}

function drawGraphNode(m) {
  const c = GRAPH_SIZE / 2;
  let dot = graph.nodes.get(m.node_id);
  if (!dot) {
    dot = svg("circle", { r: m.self ? 9 : 5 });
    dot.dataset.nodeId = m.node_id;
    dot.append(svg("title"));
    $("nodes").append(dot);
    graph.nodes.set(m.node_id, dot);
  }
  let x = c;
  let y = c;
  if (!m.self) {
    const a = angleOf(m.node_id);
    const r = radiusOf(m);
    x = c + r * Math.cos(a);
    y = c + r * Math.sin(a);
    let edge = graph.edges.get(m.node_id);
    if (!edge) { edge = svg("line", { x1: c, y1: c }); $("edges").append(edge); graph.edges.set(m.node_id, edge); }
    edge.setAttribute("x2", x.toFixed(1));
    edge.setAttribute("y2", y.toFixed(1));
    edge.setAttribute("class", typeof m.rtt_ms === "number" ? "known" : "unknown");
  }
  dot.setAttribute("cx", x.toFixed(1));
  dot.setAttribute("cy", y.toFixed(1));
  let label = graph.labels.get(m.node_id);
  if (!label && graph.labels.size < GRAPH_LABELS_MAX) {
    label = svg("text", { class: "label" });
    $("labels").append(label);
    graph.labels.set(m.node_id, label);
  }
  if (label) {
    label.setAttribute("x", (x + 8).toFixed(1));
    label.setAttribute("y", (y + 4).toFixed(1));
    const text = m.name || shortId(m.node_id);
    if (label.textContent !== text) label.textContent = text;
  }
  dot.setAttribute("class", m.self ? "self" : m.state);
  dot.firstChild.textContent = (m.name || shortId(m.node_id)) + " · " + m.state
    + (typeof m.rtt_ms === "number" ? " · " + m.rtt_ms + " ms" : " · rtt unknown");
}

function removeGraphNode(id) {
  const dot = graph.nodes.get(id);
  if (dot) { dot.remove(); graph.nodes.delete(id); }
  const edge = graph.edges.get(id);
  if (edge) { edge.remove(); graph.edges.delete(id); }
  const label = graph.labels.get(id);
  if (label) { label.remove(); graph.labels.delete(id); }
}

// ---------------------------------------------------------------- capabilities, discovery

function renderCapabilities() {
  const caps = model.capabilities;
  if (!caps) return;
  const items = caps.top.map((c) => {
    const li = el("li");
    li.dataset.capability = c.name;
    li.append(el("strong", c.name), el("span", " ×" + c.providers + " ", "providers"),
      el("span", c.description, "desc"));
    return li;
  });
  if (caps.more) items.push(el("li", "… and " + caps.more + " more", "note"));
  $("capabilities").replaceChildren(...items);
}

let searchTimer = null;
let searchSeq = 0;

function onSearch() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(runSearch, SEARCH_DEBOUNCE_MS);
}

async function runSearch() {
  const query = $("search").value.trim();
  const mine = ++searchSeq;
  if (!query) { $("discovered").replaceChildren(); $("discover-note").textContent = ""; return; }
  let resp;
  try {
    resp = await api("/v1/discover", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ description: query, top_k: 10 }),
    });
  } catch (err) {
    if (mine === searchSeq) $("discover-note").textContent = "discovery failed: " + err;
    return;
  }
  if (mine !== searchSeq) return;  // a newer query is on its way
  if (!resp.ok) {
    $("discover-note").textContent = "discovery failed: HTTP " + resp.status;
    return;
  }
  const body = await resp.json();
  if (mine !== searchSeq) return;
  const items = (body.candidates || []).map((c) => {
    const li = el("li");
    li.dataset.nodeId = c.node_id;
    li.append(el("strong", c.capability), el("span", " on "), el("span", c.name || shortId(c.node_id), "provider"),
      el("span", " score " + Number(c.score && c.score.total).toFixed(3) + " "), el("span", c.description, "desc"));
    return li;
  });
  $("discovered").replaceChildren(...items);
  $("discover-note").textContent = items.length ? "" : "no provider found for that";
}

// ---------------------------------------------------------------- tasks and traces

function taskRow(t, inFlight) {
  const tr = el("tr");
  tr.dataset.taskId = t.task_id;
  tr.className = inFlight ? "in-flight" : "outcome-" + t.outcome;
  const provider = t.provider ? nameOf(t.provider) : "-";
  const outcome = inFlight ? "in flight" : t.outcome + (t.reason ? ": " + t.reason : "");
  const took = !inFlight && typeof t.ended_at === "number"
    ? ((t.ended_at - t.started_at) * 1000).toFixed(0) + " ms" : fmtTime(t.started_at);
  tr.append(el("td", shortId(t.task_id), "id"), el("td", t.capability), el("td", provider),
    el("td", outcome, "outcome"), el("td", took));
  const cell = el("td");
  if (t.trace_id) {
    const a = el("a", "timeline", "trace-link");
    a.href = "#trace/" + encodeURIComponent(t.trace_id);
    a.dataset.traceId = t.trace_id;
    cell.append(a);
  }
  tr.append(cell);
  return tr;
}

function nameOf(id) {
  const m = model.members.get(id);
  return m && m.name ? m.name : shortId(id);
}

function renderTasks() {
  const t = model.tasks;
  if (!t) return;
  const rowsOut = [...t.in_flight.map((x) => taskRow(x, true)), ...t.recent.map((x) => taskRow(x, false))];
  $("tasks").tBodies[0].replaceChildren(...rowsOut);
  $("tasks-summary").textContent = t.in_flight.length + " delegation(s) in flight, "
    + t.serving + " task(s) being served for others, " + t.recent.length + " recent";
}

async function showTrace(traceId) {
  $("trace-panel").hidden = false;
  $("trace-id").textContent = traceId;
  const chart = $("trace");
  chart.replaceChildren();
  $("trace-note").textContent = "loading…";
  let resp;
  try {
    // The whole trace, assembled by this node from the members it touched (a work
    // route); with read access only, this node's own spans.
    resp = await api("/v1/dashboard/trace/" + encodeURIComponent(traceId));
    if (resp.status === 401 || resp.status === 404 || resp.status === 503) {
      resp = await api("/v1/traces/" + encodeURIComponent(traceId));
    }
  } catch (err) {
    $("trace-note").textContent = "could not load the trace: " + err;
    return;
  }
  if (resp.status === 404) {
    $("trace-note").textContent = "no trace recorded for this task on this node (traces not served here)";
    return;
  }
  if (!resp.ok) { $("trace-note").textContent = "could not load the trace: HTTP " + resp.status; return; }
  const body = await resp.json();
  drawTrace(chart, window.layoutTrace(body.spans, 800));
  const missing = Array.isArray(body.missing) ? body.missing : [];
  if (missing.length) {
    $("trace-note").textContent += "; not reached: " + missing.map(nameOf).join(", ");
  }
}

function drawTrace(chart, layout) {
  const laneH = 22;
  let y = 0;
  const offsets = layout.rows.map((n) => { const top = y; y += Math.max(1, n) * laneH + 14; return top; });
  chart.setAttribute("viewBox", "0 0 800 " + Math.max(40, y));
  layout.lanes.forEach((node, i) => {
    const label = svg("text", { x: 2, y: offsets[i] + 10 });
    label.setAttribute("class", "lane");
    label.dataset.nodeId = node;
    label.textContent = nameOf(node);
    chart.append(label);
  });
  for (const b of layout.bars) {
    const r = svg("rect", { x: b.x.toFixed(1), y: offsets[b.lane] + 12 + b.row * laneH, width: b.w.toFixed(1), height: laneH - 4 });
    r.setAttribute("class", b.status);
    r.dataset.nodeId = b.node_id;
    const title = svg("title");
    title.textContent = b.name;
    r.append(title);
    const t = svg("text", { x: (b.x + 2).toFixed(1), y: offsets[b.lane] + 26 + b.row * laneH });
    t.textContent = b.name;
    chart.append(r, t);
  }
  $("trace-note").textContent = layout.bars.length + " span(s) on " + layout.lanes.length
    + " node(s), " + ((layout.t1 - layout.t0) * 1000).toFixed(1) + " ms";
}

function onHash() {
  const m = /^#trace\/(.+)$/.exec(location.hash);
  if (m) showTrace(decodeURIComponent(m[1]));
}

// ---------------------------------------------------------------- trust

function spark(points, w, h) {
  const chart = svg("svg", { viewBox: "0 0 " + w + " " + h, class: "spark" });
  if (points.length < 2) return chart;
  const t0 = points[0][0];
  const t1 = points[points.length - 1][0] || t0 + 1;
  const span = Math.max(1e-9, t1 - t0);
  const d = points.map(([t, v]) => ((t - t0) / span * w).toFixed(1) + "," + ((1 - v) * h).toFixed(1));
  chart.append(svg("polyline", { points: d.join(" ") }));
  return chart;
}

function renderTrust(ids) {
  const body = $("trust").tBodies[0];
  const fresh = document.createDocumentFragment();
  for (const id of ids) {
    const t = model.trust.get(id);
    let tr = rows.trust.get(id);
    if (!t) { if (tr) { tr.remove(); rows.trust.delete(id); } continue; }
    if (!tr) {
      tr = el("tr");
      tr.dataset.nodeId = id;
      const peer = el("td");
      const button = el("button", "", "link");
      button.type = "button";
      button.addEventListener("click", () => showHistory(id));
      peer.append(button);
      tr.append(peer, el("td"), el("td"), el("td"), el("td"));
      rows.trust.set(id, tr);
      fresh.append(tr);
    }
    const c = tr.children;
    c[0].firstChild.textContent = t.name || shortId(id);
    c[1].textContent = Number(t.trust).toFixed(3);
    c[2].textContent = t.direct === null ? "-" : Number(t.direct).toFixed(3);
    c[3].textContent = t.breaker;
    c[4].replaceChildren(spark(model.trustSeen.get(id) || [], 80, 18));
  }
  body.append(fresh);
}

async function showHistory(id) {
  $("history").hidden = false;
  $("history-peer").textContent = nameOf(id);
  const chart = $("history-chart");
  let points = null;
  try {
    const resp = await api("/v1/trust/" + encodeURIComponent(id) + "/history");
    if (resp.ok) {
      const body = await resp.json();
      points = (body.points || []).filter((p) => typeof p.at === "number" && typeof p.score === "number")
        .map((p) => [p.at, p.score]);
      $("history-note").textContent = points.length + " point(s) from the node's trust history";
    } else if (resp.status === 404) {
      $("history-note").textContent = "this node keeps no trust history; showing what this page has seen";
    } else {
      $("history-note").textContent = "trust history: HTTP " + resp.status;
    }
  } catch (err) {
    $("history-note").textContent = "trust history unavailable: " + err;
  }
  if (points === null) points = model.trustSeen.get(id) || [];
  const s = spark(points, 400, 120);
  chart.replaceChildren(...s.childNodes);
}

// ---------------------------------------------------------------- start

function start() {
  $("auth-form").addEventListener("submit", (e) => { e.preventDefault(); saveToken(); });
  $("search").addEventListener("input", onSearch);
  $("trace-close").addEventListener("click", () => { $("trace-panel").hidden = true; history.replaceState(null, "", "#"); });
  window.addEventListener("hashchange", onHash);
  onHash();
  connect();
}

// For tests and benchmarks: feed events and render at once.
window.meshDash = {
  applySnapshot,
  applyDelta,
  flush() { frameQueued = false; render(); },
  stats,
  model,
  connect,
  stop() { if (source) { source.close(); source = null; } },
};

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
