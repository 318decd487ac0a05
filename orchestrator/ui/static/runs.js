// The Runs page (/): the runs table, sorted, filtered and paged by the API (not here: a page
// holds at most `limit` runs of possibly thousands), patched in place at every poll, and the
// loss curves of the checked runs overlaid in one chart.
//
// The page's state (filters, sort, page, checked runs) lives in the URL's query, so a reload or
// a shared link shows the same thing: status, provider, q, sort, order, page, limit, sel.
"use strict";

import {
  api, ApiError, el, int, markReady, notice, num, pct, qs, setAttr, setStatusBadge, setText,
  startPolling, statusBadge, TERMINAL, usd, utc, duration, debounce,
} from "/ui/common.js";
import { appendSeries, COLORS, draw, layout, lineMode, loadPlotly, X_AXES } from "/ui/charts.js";

const PAGE_SIZE = 100;
// the first click on a column sorts the way one usually wants it: lowest loss first, newest,
// fastest, most expensive first; names and statuses alphabetically
const FIRST_ORDER = { name: "asc", status: "asc", train_loss: "asc", val_loss: "asc", test_loss: "asc" };

// ---------------------------------------------------------------------------------------------
// State, read from and written back to the URL

const url = new URL(location.href);
const state = {
  status: url.searchParams.get("status") || "",
  provider: url.searchParams.get("provider") || "",
  q: url.searchParams.get("q") || "",
  sort: url.searchParams.get("sort") || "created_at",
  order: url.searchParams.get("order") === "asc" ? "asc" : "desc",
  page: Math.max(1, Number(url.searchParams.get("page")) || 1),
  limit: Math.min(500, Math.max(1, Number(url.searchParams.get("limit")) || PAGE_SIZE)),
};
const selected = new Set((url.searchParams.get("sel") || "").split(",").filter(Boolean));

function saveState() {
  const u = new URL(location.href);
  const put = (key, value, dflt) => (value === dflt || value === "" ? u.searchParams.delete(key) : u.searchParams.set(key, value));
  put("status", state.status, "");
  put("provider", state.provider, "");
  put("q", state.q, "");
  put("sort", state.sort, "created_at");
  put("order", state.order, "desc");
  put("page", String(state.page), "1");
  put("sel", [...selected].join(","), "");
  history.replaceState(null, "", u);
}

// ---------------------------------------------------------------------------------------------
// The table: one <tr data-run-id> per run, kept across polls; cells are patched, never rebuilt,
// so a checkbox, a hover or a text selection in the table survives an update.

const tbody = document.querySelector("#runs-table tbody");
const rows = new Map(); // run id -> tr
const names = new Map(); // run id -> name, for the overlay's trace names (also off this page)

/** Each column: make(td, run) once, then update(td, run) at every poll. */
const COLUMNS = {
  select: {
    make: (td, run) => td.append(el("input", { type: "checkbox", class: "select-run", "data-run-id": run.id, "aria-label": `plot ${run.id}` })),
    update: (td, run) => {
      const box = td.firstChild;
      if (box.checked !== selected.has(run.id)) box.checked = selected.has(run.id);
    },
  },
  id: {
    make: (td, run) => td.append(el("a", { href: `/runs/${encodeURIComponent(run.id)}` }, run.id)),
    update: (td, run) => setAttr(td.firstChild, "title", `submitted ${utc(run.created_at)}`),
  },
  name: { update: (td, run) => setText(td, run.name) },
  status: {
    make: (td, run) => td.append(statusBadge(run.status)),
    update: (td, run) => {
      setStatusBadge(td.firstChild, run.status);
      setAttr(td, "title", run.status_reason || (run.cancel_requested && !TERMINAL.has(run.status) ? "cancel requested" : null));
    },
  },
  provider: {
    // the provider, and under it (small) the instance type the spec asks for
    make: (td) => td.append(el("span", { class: "prov" }), el("span", { class: "itype" })),
    update: (td, run) => {
      setText(td.firstChild, run.provider || "–");
      setText(td.lastChild, run.instance_type || "");
    },
  },
  progress: {
    make: (td) => td.append(el("span", { class: "bar" }, el("span")), el("span", { class: "pct" })),
    update: (td, run) => {
      const f = run.progress.fraction;
      td.querySelector(".bar > span").style.width = `${Math.round(Math.min(1, f || 0) * 100)}%`;
      setText(td.querySelector(".pct"), pct(f));
      setAttr(td, "title", `${int(run.progress.tokens_done)} / ${int(run.progress.target_tokens)} tokens, step ${int(run.progress.step)}`);
    },
  },
  train_loss: { num: true, update: (td, run) => setText(td, num(run.progress.train_loss)) },
  val_loss: { num: true, update: (td, run) => setText(td, num(run.progress.val_loss)) },
  test_loss: { num: true, update: (td, run) => setText(td, num(run.progress.test_loss)) },
  tokens_per_s: { num: true, update: (td, run) => setText(td, int(run.progress.tokens_per_s)) },
  cost: { num: true, update: (td, run) => setText(td, usd(run.cost.usd)) },
  projected: {
    num: true,
    update: (td, run) => {
      const { projected_usd: p, max_usd: cap } = run.budget;
      setText(td, cap == null ? usd(p) : `${usd(p)} / ${usd(cap)}`);
      setAttr(td, "class", cap != null && p != null && p > cap ? "num over" : "num");
    },
  },
  eta: {
    num: true,
    update: (td, run) => {
      const left = run.budget.eta_s ?? run.progress.eta_s;
      setText(td, TERMINAL.has(run.status) ? "–" : duration(left));
      setAttr(td, "title", left == null || TERMINAL.has(run.status) ? null : `ends about ${utc(new Date(Date.now() + left * 1000))}`);
    },
  },
};

function makeRow(run) {
  const tr = el("tr", { "data-run-id": run.id });
  for (const [key, col] of Object.entries(COLUMNS)) {
    const td = el("td", { "data-col": key, class: col.num ? "num" : null });
    if (col.make) col.make(td, run);
    tr.append(td);
  }
  return tr;
}

function patchTable(runs) {
  const seen = new Set();
  let before = tbody.firstChild;
  for (const run of runs) {
    seen.add(run.id);
    names.set(run.id, run.name);
    let tr = rows.get(run.id);
    if (!tr) {
      tr = makeRow(run);
      rows.set(run.id, tr);
    }
    for (const td of tr.children) COLUMNS[td.dataset.col].update(td, run);
    tr.classList.toggle("selected", selected.has(run.id));
    // keep the API's order, moving a row only when it is out of place
    if (tr !== before) tbody.insertBefore(tr, before);
    else before = before.nextSibling;
    before = tr.nextSibling;
  }
  for (const [id, tr] of rows) {
    if (!seen.has(id)) {
      tr.remove();
      rows.delete(id);
    }
  }
  document.getElementById("runs-empty").hidden = runs.length > 0;
}

function patchHeader() {
  for (const th of document.querySelectorAll("#runs-table th[data-sort]")) {
    const active = th.dataset.sort === state.sort;
    setAttr(th, "aria-sort", active ? (state.order === "asc" ? "ascending" : "descending") : "none");
  }
}

function patchPager(total, offset, count) {
  const info = document.getElementById("page-info");
  setText(info, total ? `${int(offset + 1)}–${int(offset + count)} of ${int(total)}` : "0 runs");
  document.getElementById("page-prev").disabled = state.page <= 1;
  document.getElementById("page-next").disabled = offset + count >= total;
}

// ---------------------------------------------------------------------------------------------
// Loading: a filter, sort or page change loads at once; the poller reloads the same query. A
// generation number drops an answer that a newer request has overtaken.

let generation = 0;

async function loadRuns() {
  const mine = ++generation;
  const offset = (state.page - 1) * state.limit;
  const query = qs({
    status: state.status, provider: state.provider, q: state.q,
    sort: state.sort, order: state.order, limit: state.limit, offset,
  });
  let data;
  try {
    data = await api(`/runs${query}`);
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    notice("runs-notice", `The runs could not be listed: ${err.message}`);
    return;
  }
  if (mine !== generation) return;
  notice("runs-notice", "");
  // past the last page (runs deleted, or a stale link): go to the last page there is
  if (!data.runs.length && data.total > 0 && offset >= data.total) {
    state.page = Math.max(1, Math.ceil(data.total / state.limit));
    saveState();
    return loadRuns();
  }
  patchTable(data.runs);
  patchHeader();
  patchPager(data.total, offset, data.runs.length);
  statuses = new Map(data.runs.map((r) => [r.id, r.status]));
}

function changed() {
  saveState();
  loadRuns().catch(() => {}); // an outage shows the banner; the next poll tries again
}

// ---------------------------------------------------------------------------------------------
// The overlay: two traces per checked run, its train and validation loss, fetched through the
// series endpoint's cursor (only what is new at each poll) and kept here.

const overlay = document.getElementById("chart-overlay");
const overlayX = document.getElementById("overlay-x");
const overlayLog = document.getElementById("overlay-log");
const curves = new Map(); // run id -> {after, done, train: {tokens,time,usd,y}, val: {...}}
let statuses = new Map(); // run id -> status, from the table's last answer
let overlayDirty = true;

const emptySeries = () => ({ tokens: [], time: [], usd: [], y: [] });

// One refresh at a time: a checkbox click and a poll round must not both append the same page.
let curvesQueue = Promise.resolve();
function refreshCurves() {
  const next = curvesQueue.then(readCurves);
  curvesQueue = next.catch(() => {});
  return next;
}

async function readCurves() {
  for (const id of selected) {
    let c = curves.get(id);
    if (!c) {
      c = { after: 0, done: false, train: emptySeries(), val: emptySeries() };
      curves.set(id, c);
    }
    if (c.done) continue;
    let status = statuses.get(id);
    if (!names.has(id) || status === undefined) {
      // a checked run on another page of the table: its name and status from its own record
      const run = await api(`/runs/${encodeURIComponent(id)}`);
      names.set(id, run.name);
      status = run.status;
    }
    const page = await api(`/runs/${encodeURIComponent(id)}/series${qs({ after_id: c.after, max_points: 2000 })}`);
    const n = appendSeries(c.train, page.series.train_loss).n + appendSeries(c.val, page.series.val_loss).n;
    c.after = page.next_after_id;
    // a finished run's series cannot grow: read once more after the end, then never again
    c.done = TERMINAL.has(status);
    if (n) overlayDirty = true;
  }
}

function drawOverlay() {
  const axis = X_AXES[overlayX.value] || X_AXES.tokens;
  const traces = [];
  let k = 0;
  for (const id of selected) {
    const c = curves.get(id);
    const name = names.get(id) || id;
    const color = COLORS[k++ % COLORS.length];
    if (!c) continue;
    const x = (s) => s[axis.column].map(axis.toX);
    traces.push(
      { name: `${name} · train`, x: x(c.train), y: c.train.y, type: "scatter", mode: lineMode(c.train.y.length), line: { color, width: 1.5 }, marker: { size: 4 }, hovertemplate: "%{y:.4f}" },
      { name: `${name} · val`, x: x(c.val), y: c.val.y, type: "scatter", mode: "lines+markers", line: { color, width: 1.5, dash: "dash" }, marker: { size: 5 }, hovertemplate: "%{y:.4f}" },
    );
  }
  const lay = layout({
    x: axis.axis,
    y: { title: { text: "loss" }, type: overlayLog.checked ? "log" : "linear" },
    height: 340,
    // a new x axis or scale starts from a fresh view; otherwise the user's zoom is kept
    extra: { uirevision: `${overlayX.value}-${overlayLog.checked}` },
  });
  document.getElementById("overlay-hint").hidden = selected.size > 0;
  overlayDirty = false;
  return draw(overlay, traces, lay).catch((err) => {
    overlayDirty = true; // not drawn (plotly.js did not load): the next round tries again
    throw err;
  });
}

// ---------------------------------------------------------------------------------------------
// Wiring

document.getElementById("filter-status").value = state.status;
document.getElementById("filter-provider").value = state.provider;
document.getElementById("filter-name").value = state.q;

document.getElementById("filter-status").addEventListener("change", (e) => {
  state.status = e.target.value;
  state.page = 1;
  changed();
});
document.getElementById("filter-provider").addEventListener("change", (e) => {
  state.provider = e.target.value;
  state.page = 1;
  changed();
});
document.getElementById("filter-name").addEventListener("input", debounce((e) => {
  state.q = e.target.value.trim();
  state.page = 1;
  changed();
}, 250));

for (const th of document.querySelectorAll("#runs-table th[data-sort]")) {
  th.tabIndex = 0;
  const sort = () => {
    const key = th.dataset.sort;
    state.order = key === state.sort ? (state.order === "asc" ? "desc" : "asc") : FIRST_ORDER[key] || "desc";
    state.sort = key;
    state.page = 1;
    patchHeader();
    changed();
  };
  th.addEventListener("click", sort);
  th.addEventListener("keydown", (e) => (e.key === "Enter" || e.key === " ") && (e.preventDefault(), sort()));
}

document.getElementById("page-prev").addEventListener("click", () => {
  state.page = Math.max(1, state.page - 1);
  changed();
});
document.getElementById("page-next").addEventListener("click", () => {
  state.page += 1;
  changed();
});

tbody.addEventListener("change", async (e) => {
  const box = e.target.closest("input.select-run");
  if (!box) return;
  const id = box.dataset.runId;
  if (box.checked) selected.add(id);
  else selected.delete(id);
  box.closest("tr").classList.toggle("selected", box.checked);
  saveState();
  overlayDirty = true;
  try {
    await refreshCurves();
  } finally {
    drawOverlay().catch(() => {}); // not drawn: the next round draws
  }
});

overlayX.addEventListener("change", () => drawOverlay().catch(() => {}));
overlayLog.addEventListener("change", () => drawOverlay().catch(() => {}));

patchHeader();
startPolling(async () => {
  await loadRuns();
  await refreshCurves();
  if (overlayDirty) await drawOverlay();
  markReady();
  return false; // the list can always change: poll on
});
loadPlotly().catch(() => {}); // compiles while the first requests are out; draw() reports a failure
