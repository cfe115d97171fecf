// Swimlane layout of one trace: pure, so it can be tested on a fixed list of spans.
// A span is {trace_id, span_id, parent_span_id, name, kind, node_id, peer_id, start, end,
// status, attributes} with start/end in unix seconds (end null while it runs).
"use strict";

// Spans drawn at most; a trace assembled from a hostile mesh may hold more.
const MAX_TRACE_SPANS = 500;

// layoutTrace(spans, width) -> {t0, t1, lanes: [node_id], rows: [rows per lane],
//   bars: [{span_id, parent_span_id, name, node_id, lane, row, x, w, status}]}
// One lane per node, in the order each node first appears in time; spans of one lane that
// overlap go to separate rows (first row free). x and w are in [0, width]; a bar is at
// least 1 unit wide. Spans with no node or no numeric start are left out.
function layoutTrace(spans, width) {
  const list = (Array.isArray(spans) ? spans : [])
    .filter((s) => s && typeof s === "object" && typeof s.start === "number"
      && isFinite(s.start) && typeof s.node_id === "string")
    .slice(0, MAX_TRACE_SPANS)
    .map((s) => ({
      span: s,
      start: s.start,
      end: typeof s.end === "number" && isFinite(s.end) && s.end >= s.start ? s.end : null,
    }));
  if (list.length === 0) {
    return { t0: 0, t1: 0, lanes: [], rows: [], bars: [] };
  }
  const t0 = Math.min(...list.map((e) => e.start));
  let t1 = Math.max(...list.map((e) => (e.end === null ? e.start : e.end)));
  if (t1 <= t0) t1 = t0 + 1e-3;
  for (const e of list) if (e.end === null) e.end = t1;
  list.sort((a, b) => a.start - b.start || a.end - b.end
    || String(a.span.span_id).localeCompare(String(b.span.span_id)));
  const lanes = [];
  const laneOf = new Map();
  const rowEnds = [];  // per lane: the end time of the last bar in each row
  const bars = [];
  const scale = width / (t1 - t0);
  for (const e of list) {
    const node = e.span.node_id;
    if (!laneOf.has(node)) {
      laneOf.set(node, lanes.length);
      lanes.push(node);
      rowEnds.push([]);
    }
    const lane = laneOf.get(node);
    const ends = rowEnds[lane];
    let row = ends.findIndex((end) => end <= e.start);
    if (row === -1) { row = ends.length; ends.push(e.end); } else { ends[row] = e.end; }
    const x = (e.start - t0) * scale;
    bars.push({
      span_id: String(e.span.span_id),
      parent_span_id: e.span.parent_span_id == null ? null : String(e.span.parent_span_id),
      name: String(e.span.name),
      node_id: node,
      lane,
      row,
      x,
      w: Math.max(1, Math.min(width - x, (e.end - e.start) * scale)),
      status: e.span.status === "error" || e.span.status === "ERROR" ? "error" : "ok",
    });
  }
  return { t0, t1, lanes, rows: rowEnds.map((r) => r.length), bars };
}

if (typeof window !== "undefined") window.layoutTrace = layoutTrace;
