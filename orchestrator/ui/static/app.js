// The trainyard dashboard: a list of runs at "/", one run at "/runs/<id>".
// Plain DOM and SVG, no libraries: the service works with no internet.
"use strict";

const API = "/api/v1";
const REFRESH_MS = 3000;
const TERMINAL = new Set(["succeeded", "failed", "cancelled", "stopped"]);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}
const fmt = {
  num: (x, d = 3) => (x == null ? "–" : Number(x).toFixed(d)),
  int: (x) => (x == null ? "–" : Number(x).toLocaleString("en-US")),
  usd: (c) => "$" + (c / 100).toFixed(2),
  dur: (s) => {
    if (s == null) return "–";
    s = Math.round(s);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return h ? `${h}h${String(m).padStart(2, "0")}m` : m ? `${m}m${String(r).padStart(2, "0")}s` : `${r}s`;
  },
};
async function getJSON(path) {
  const res = await fetch(API + path);
  if (!res.ok) throw new Error(`${res.status} ${(await res.json()).detail?.message || res.statusText}`);
  return res.json();
}
function statusBadge(s) { return el("span", { class: "status " + s }, s); }
function bar(fraction) {
  const b = el("span", { class: "bar" }, el("span"));
  b.firstChild.style.width = `${Math.round((fraction || 0) * 100)}%`;
  return b;
}

async function showRuns(app) {
  const data = await getJSON("/runs?limit=100");
  const head = el("tr", {}, ...["run", "name", "status", "progress", "tokens", "train loss",
    "val loss", "test loss", "tokens/s", "cost", "ETA", "wall"].map((h) => el("th", {}, h)));
  const rows = data.runs.map((r) => el("tr", {},
    el("td", {}, el("a", { href: `/runs/${r.id}` }, r.id)), el("td", {}, r.name),
    el("td", {}, statusBadge(r.status)), el("td", {}, bar(r.progress.fraction)),
    el("td", { class: "num" }, fmt.int(r.progress.tokens_done)),
    el("td", { class: "num" }, fmt.num(r.progress.train_loss)),
    el("td", { class: "num" }, fmt.num(r.progress.val_loss)),
    el("td", { class: "num" }, fmt.num(r.progress.test_loss)),
    el("td", { class: "num" }, fmt.int(r.progress.tokens_per_s && Math.round(r.progress.tokens_per_s))),
    el("td", { class: "num" }, fmt.usd(r.cost.cents)), el("td", { class: "num" }, fmt.dur(r.progress.eta_s)),
    el("td", { class: "num" }, fmt.dur(r.wall_s))));
  app.replaceChildren(
    el("p", { class: "muted" }, `${data.total} runs`),
    rows.length ? el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows))
      : el("p", {}, "No runs yet. Submit one with `trainyard submit SPEC.yaml`."));
}

// metric points are fetched incrementally with the id cursor and kept between refreshes
const series = { after: 0, train: [], val: [] };
async function loadMetrics(runId) {
  for (;;) {
    const page = await getJSON(`/runs/${runId}/metrics?after_id=${series.after}&limit=5000`);
    for (const p of page.points) {
      if (p.kind === "train" && p.train_loss != null) series.train.push([p.tokens, p.train_loss]);
      if (p.kind === "val" && p.val_loss != null) series.val.push([p.tokens, p.val_loss]);
    }
    series.after = page.next_after_id;
    if (!page.has_more) return;
  }
}

function lossChart() {
  const W = 720, H = 280, P = 44, ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "chart"); svg.setAttribute("width", W); svg.setAttribute("height", H);
  const all = series.train.concat(series.val);
  const add = (tag, attrs, text) => {
    const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text != null) n.textContent = text;
    svg.append(n); return n;
  };
  if (!all.length) { add("text", { x: P, y: H / 2 }, "no metrics yet"); return svg; }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs) || 1, y0 = Math.min(...ys), y1 = Math.max(...ys);
  const sx = (x) => P + ((x - x0) / (x1 - x0 || 1)) * (W - 2 * P);
  const sy = (y) => H - P + 10 - ((y - y0) / (y1 - y0 || 1)) * (H - 2 * P);
  add("line", { x1: P, y1: H - P + 10, x2: W - P, y2: H - P + 10, stroke: "#999" });
  add("line", { x1: P, y1: P - 10, x2: P, y2: H - P + 10, stroke: "#999" });
  add("text", { x: 4, y: P - 10 }, y1.toFixed(2)); add("text", { x: 4, y: H - P + 10 }, y0.toFixed(2));
  add("text", { x: W - P - 60, y: H - 12 }, `${fmt.int(x1)} tokens`);
  const path = (pts, color, label, ly) => {
    if (!pts.length) return;
    add("polyline", { fill: "none", stroke: color, "stroke-width": 1.5,
      points: pts.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ") });
    add("text", { x: W - P - 60, y: ly, fill: color }, label);
  };
  path(series.train, "#457b9d", "train loss", 20);
  path(series.val, "#e63946", "val loss", 34);
  return svg;
}

async function showRun(app, runId) {
  const [run, events, logs] = await Promise.all([getJSON(`/runs/${runId}`),
    getJSON(`/runs/${runId}/events?limit=1000`), getJSON(`/runs/${runId}/logs?tail=200`)]);
  await loadMetrics(runId);
  document.getElementById("where").textContent = ` / ${run.name} (${run.id})`;
  const p = run.progress;
  const card = (label, value) => el("div", { class: "card" }, el("span", { class: "muted" }, label), el("b", {}, value));
  app.replaceChildren(
    el("p", {}, statusBadge(run.status), " ", run.status_reason || "", run.cancel_requested && !TERMINAL.has(run.status) ? " (cancel requested)" : ""),
    el("div", { class: "cards" },
      card("tokens", `${fmt.int(p.tokens_done)} / ${fmt.int(p.target_tokens)}`), card("step", fmt.int(p.step)),
      card("train loss", fmt.num(p.train_loss)), card("val loss", fmt.num(p.val_loss)),
      card("test loss", fmt.num(p.test_loss)), card("tokens/s", fmt.int(p.tokens_per_s && Math.round(p.tokens_per_s))),
      card("cost", fmt.usd(run.cost.cents)), card("ETA", fmt.dur(p.eta_s)), card("wall time", fmt.dur(run.wall_s))),
    el("h2", {}, "Loss"), lossChart(),
    el("h2", {}, "Events"),
    el("table", {}, el("tbody", {}, ...events.events.map((e) => el("tr", {},
      el("td", {}, new Date(e.time).toLocaleString()), el("td", {}, e.kind),
      el("td", {}, e.to_status ? `${e.from_status || ""} → ${e.to_status}` : ""), el("td", {}, e.message))))),
    el("h2", {}, "Log (tail)"),
    el("pre", { class: "logs" }, logs.chunks.map((c) => c.text).join("") || "(no log yet)"));
  return TERMINAL.has(run.status);
}

async function main() {
  const app = document.getElementById("app");
  const m = location.pathname.match(/^\/runs\/([^/]+)$/);
  for (;;) {
    let done = false;
    try {
      done = m ? await showRun(app, decodeURIComponent(m[1])) : (await showRuns(app), false);
    } catch (err) {
      app.replaceChildren(el("p", { class: "status failed" }, String(err.message || err)));
    }
    if (done) return;  // a finished run does not change any more
    await new Promise((r) => setTimeout(r, REFRESH_MS));
  }
}
main();
