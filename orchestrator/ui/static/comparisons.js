// The Comparisons page: /comparisons lists the comparisons and draws test loss against US$ over
// every finished run with its Pareto frontier; /comparisons/{id} adds that comparison's table,
// its judged items (every model's answer and score) and the position-bias figure.
//
// Polled: a comparison moves pending -> running -> succeeded as its baselines train and the
// judge works, and new runs finish. Its report (every judgement) is read once, when it exists.
"use strict";

import { api, ApiError, el, int, markReady, notice, num, setAttr, setStatusBadge, setText, startPolling, statusBadge, usd, utc } from "/ui/common.js";
import { COLORS, draw, layout, loadPlotly } from "/ui/charts.js";

const enc = encodeURIComponent;
const match = location.pathname.match(/^\/comparisons\/([^/]+)\/?$/);
const comparisonId = match ? decodeURIComponent(match[1]) : null;
const ENDED = new Set(["succeeded", "failed"]);

/** `61.2 ± 6.0`: the mean and the half-width of its 95% interval. */
function score(mean, low, high) {
  if (mean === null || mean === undefined) return "–";
  if (low === null || high === null || low === undefined) return num(mean, 1);
  return `${num(mean, 1)} ± ${num((high - low) / 2, 1)}`;
}

// ---------------------------------------------------------------------------------------------
// The list: rows patched in place by id

function patchList(data) {
  const tbody = document.querySelector("#comparisons-list tbody");
  const rows = new Map([...tbody.children].map((tr) => [tr.dataset.comparisonId, tr]));
  let before = tbody.firstChild;
  for (const c of data.comparisons) {
    let tr = rows.get(c.id);
    if (!tr) {
      tr = el("tr", { "data-comparison-id": c.id },
        el("td", { class: "nowrap" }, el("a", { href: `/comparisons/${enc(c.id)}` }, c.id)),
        el("td", { "data-col": "status" }, statusBadge(c.status)),
        el("td", { "data-col": "models" }),
        el("td", {}, c.mode),
        el("td", { class: "num" }, c.k),
        el("td", { "data-col": "judge" }),
        el("td", { class: "num", "data-col": "usage" }),
        el("td", { class: "nowrap" }, utc(c.created_at)));
    }
    rows.delete(c.id);
    setStatusBadge(tr.querySelector('[data-col="status"] .status'), c.status);
    setAttr(tr.querySelector('[data-col="status"]'), "title", c.status_reason);
    setText(tr.querySelector('[data-col="models"]'), c.rows.map((r) => (r.score == null ? r.model : `${r.model} (${num(r.score, 1)})`)).join(", "));
    setText(tr.querySelector('[data-col="judge"]'), c.judge ? c.judge.model : "–");
    setText(tr.querySelector('[data-col="usage"]'), c.usage ? usd(c.usage.cost_cents / 100) : "–");
    tr.classList.toggle("selected", c.id === comparisonId);
    if (tr !== before) tbody.insertBefore(tr, before);
    before = tr.nextSibling;
  }
  for (const tr of rows.values()) tr.remove();
  document.getElementById("comparisons-empty").hidden = data.comparisons.length > 0;
}

// ---------------------------------------------------------------------------------------------
// Test loss against US$: every finished run, the frontier joined by a line. Re-drawn only when
// the answer changed (Plotly.react would diff anyway; this skips even that).

let paretoKey = "";
let paretoPoints = [];
let highlighted = new Set(); // run ids of the comparison shown

function drawPareto(points) {
  paretoPoints = points;
  const log = document.getElementById("pareto-log").checked;
  const front = points.filter((p) => p.frontier).sort((a, b) => a.usd - b.usd);
  const hover = "<b>%{customdata[1]}</b> (%{customdata[0]})<br>test loss %{y:.4f}<br>$%{x:,.2f}<extra></extra>";
  const mine = (p) => highlighted.has(p.run_id);
  const traces = [
    {
      name: "runs", type: "scatter", mode: "markers",
      x: points.map((p) => p.usd), y: points.map((p) => p.test_loss),
      customdata: points.map((p) => [p.run_id, p.name]),
      marker: {
        size: points.map((p) => (mine(p) ? 12 : 8)),
        color: points.map((p) => (mine(p) ? COLORS[3] : COLORS[0])),
        line: { width: points.map((p) => (mine(p) ? 1.5 : 0)), color: "#222" },
        opacity: 0.85,
      },
      hovertemplate: hover,
    },
    {
      name: "Pareto frontier", type: "scatter", mode: "lines+markers",
      x: front.map((p) => p.usd), y: front.map((p) => p.test_loss), customdata: front.map((p) => [p.run_id, p.name]),
      line: { color: COLORS[1], shape: "hv" }, marker: { size: 6, color: COLORS[1] }, hovertemplate: hover,
    },
  ];
  const lay = layout({
    x: { title: { text: "cost (US$)" }, type: log ? "log" : "linear", tickprefix: "$" },
    y: { title: { text: "test loss" } },
    height: 360,
    extra: { hovermode: "closest", uirevision: String(log) },
  });
  if (!points.length) {
    lay.annotations = [{ text: "no finished run with a test loss yet", xref: "paper", yref: "paper", x: 0.5, y: 0.5, showarrow: false, font: { color: "#6b7280" } }];
  }
  const node = document.getElementById("chart-pareto");
  const first = !node.data;
  return draw(node, traces, lay).then(() => {
    // a click on a run opens it (bound once: react keeps the element and its listeners)
    if (first) node.on("plotly_click", (ev) => ev.points[0] && (location.href = `/runs/${enc(ev.points[0].customdata[0])}`));
  });
}

async function pollPareto() {
  const data = await api("/pareto");
  const key = JSON.stringify(data.points);
  if (key !== paretoKey) {
    await drawPareto(data.points);
    paretoKey = key; // once drawn: a draw that failed (plotly.js did not load) is tried again
  }
}

// ---------------------------------------------------------------------------------------------
// One comparison

let report = null; // read once, when the comparison has one

function patchComparison(c) {
  document.getElementById("comparison-panel").hidden = false;
  setText(document.getElementById("comparison-title"), `Comparison ${c.id}`);
  const judge = c.judge ? `judge ${c.judge.model}, ` : "";
  setText(document.getElementById("comparison-meta"),
    `${c.mode}, ${judge}${c.k} repeat(s), seed ${c.seed} · created ${utc(c.created_at)}` +
    (c.finished_at ? ` · finished ${utc(c.finished_at)}` : "") +
    (c.usage ? ` · ${c.usage.calls_made} judge calls (${c.usage.calls_cached} cached), ${usd(c.usage.cost_cents / 100)}` : ""));
  const waiting = { pending: "waiting for the baseline runs to finish", running: "the judge is scoring the answers" }[c.status];
  setText(document.getElementById("comparison-status"),
    `${c.status}${c.status_reason ? `: ${c.status_reason}` : ""}${waiting ? ` (${waiting}…)` : ""}`);

  const tbody = document.querySelector("#comparison tbody");
  const rows = new Map([...tbody.children].map((tr) => [tr.dataset.model, tr]));
  for (const r of c.rows) {
    let tr = rows.get(r.model);
    if (!tr) {
      tr = el("tr", { "data-model": r.model },
        el("td", {}, el("b", {}, r.model), r.baseline ? el("span", { class: "tag" }, "baseline") : null),
        el("td", { class: "nowrap" }, el("a", { href: `/runs/${enc(r.run_id)}` }, r.run_id)),
        el("td", { "data-col": "status" }, statusBadge(r.run_status)),
        el("td", { class: "num", "data-col": "test_loss" }),
        el("td", { class: "num", "data-col": "bits_per_byte" }),
        el("td", { class: "num", "data-col": "score" }),
        el("td", { class: "num", "data-col": "items" }),
        el("td", { class: "num", "data-col": "cost" }));
      tbody.append(tr);
    }
    setStatusBadge(tr.querySelector('[data-col="status"] .status'), r.run_status);
    setText(tr.querySelector('[data-col="test_loss"]'), num(r.test_loss, 4));
    setText(tr.querySelector('[data-col="bits_per_byte"]'), num(r.bits_per_byte, 4));
    setText(tr.querySelector('[data-col="score"]'), score(r.score, r.ci_low, r.ci_high));
    setAttr(tr.querySelector('[data-col="score"]'), "title", r.ci_low == null ? null : `95% CI ${num(r.ci_low, 1)}–${num(r.ci_high, 1)}`);
    setText(tr.querySelector('[data-col="items"]'), r.n_items == null ? "–" : `${r.n_items}` + (r.n_missing ? ` (${r.n_missing} missing)` : ""));
    setText(tr.querySelector('[data-col="cost"]'), usd(r.cost.usd));
  }
  const ids = new Set(c.rows.map((r) => r.run_id));
  if ([...ids].some((id) => !highlighted.has(id))) {
    highlighted = ids;
    if (paretoKey) drawPareto(paretoPoints).catch(() => {}); // drawn again at the next change
  }
}

function showReport(rep) {
  // differences: is A better than B beyond the noise of which items were asked?
  const diffs = rep.differences.map((d) => el("tr", {},
    el("td", {}, `${d.model_a} − ${d.model_b}`),
    el("td", { class: "num" }, num(d.mean, 1)),
    el("td", { class: "num" }, d.ci_low == null ? "–" : `${num(d.ci_low, 1)} to ${num(d.ci_high, 1)}`),
    el("td", {}, d.ci_low == null ? "–" : d.ci_low > 0 || d.ci_high < 0 ? "yes" : "no (the interval holds 0)"),
    el("td", { class: "num" }, d.n_items)));
  document.querySelector("#differences tbody").replaceChildren(...diffs);
  document.getElementById("differences-wrap").hidden = !diffs.length;

  const drawn = drawPositionBias(rep);

  // the items: what was asked, the reference, and each model's answer with its mean score
  const comments = commentsByItem(rep);
  const items = rep.item_answers.map((it) => el("div", { class: "item", "data-item": it.index },
    el("p", { class: "instruction" }, el("b", {}, `#${it.index + 1} `), it.instruction, it.input ? el("span", { class: "muted" }, `\n${it.input}`) : null),
    el("details", {}, el("summary", { class: "muted small" }, "reference answer"), el("div", { class: "answer-cell" }, it.reference || "–")),
    el("div", { class: "answers" }, Object.keys(it.answers).map((model) => el("div", { class: "answer", "data-model": model },
      el("header", {}, el("span", {}, model), el("span", { class: "score" }, it.scores[model] == null ? "not scored" : `score ${num(it.scores[model], 1)}`)),
      el("div", { class: "text" }, it.answers[model] ?? el("span", { class: "muted" }, "(no answer: the run no longer holds these items)")),
      (comments.get(`${it.index}/${model}`) || []).length
        ? el("details", {}, el("summary", { class: "muted small" }, "judge's comments"),
          el("ul", { class: "small" }, comments.get(`${it.index}/${model}`).map((t) => el("li", {}, t))))
        : null)))));
  document.getElementById("items").replaceChildren(...items);
  setText(document.getElementById("items-note"), `${rep.item_answers.length} item(s); scores are each model's mean over the repeats`);
  return drawn;
}

/** "item/model" -> the judge's comments over the repeats (with the position it was shown at). */
function commentsByItem(rep) {
  const out = new Map();
  for (const item of rep.items) {
    for (const j of item.judgements) {
      for (const [model, entry] of Object.entries(j.scores)) {
        const key = `${item.index}/${model}`;
        if (!out.has(key)) out.set(key, []);
        const where = entry.position ? ` (shown ${entry.position}${["st", "nd", "rd"][entry.position - 1] || "th"})` : "";
        const text = entry.score == null ? `repeat ${j.repeat + 1}: missing${j.missing_reason ? ` (${j.missing_reason})` : ""}` : `repeat ${j.repeat + 1}${where}: ${num(entry.score, 0)}${entry.comments ? ` - ${entry.comments}` : ""}`;
        out.get(key).push(text);
      }
    }
  }
  return out;
}

/** Mean score by the position an answer was shown at, per model: bars that differ by position
 * mean the order of the answers moved the judge. */
function drawPositionBias(rep) {
  const cons = rep.consistency;
  const text = document.getElementById("position-bias-text");
  const node = document.getElementById("chart-position");
  if (!cons.positions.length) {
    text.textContent = "No positions: in pointwise mode each answer is judged alone.";
    node.hidden = true;
    return Promise.resolve();
  }
  text.textContent =
    `Position bias ${num(cons.position_bias, 1)} points: the spread of the positions' own effect, with models and items taken out (about 0 for an unbiased judge). ` +
    cons.positions.map((p) => `shown ${p.position}: effect ${p.effect >= 0 ? "+" : ""}${num(p.effect, 1)} over ${p.n}`).join(", ") + ".";
  const positions = cons.positions.map((p) => String(p.position));
  const traces = cons.models.map((m, i) => ({
    name: m.model, type: "bar", x: positions.map((p) => `shown ${p}`), y: positions.map((p) => m.mean_by_position[p] ?? null),
    marker: { color: COLORS[i % COLORS.length] }, hovertemplate: `${m.model}: %{y:.1f}<extra></extra>`,
  }));
  return draw(node, traces, layout({
    x: { title: { text: "position the answer was shown at" }, type: "category" },
    y: { title: { text: "mean score (0-100)" }, rangemode: "tozero" },
    height: 300,
    extra: { barmode: "group", hovermode: "x unified" },
  }));
}

async function pollComparison() {
  let c;
  try {
    c = await api(`/comparisons/${enc(comparisonId)}`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      notice("cmp-notice", `There is no comparison with id ${comparisonId}.`);
      return true;
    }
    throw err;
  }
  patchComparison(c);
  if (!report && c.status === "succeeded" && c.report_id) {
    const rep = await api(`/comparisons/${enc(comparisonId)}/report`);
    await showReport(rep);
    report = rep; // once shown, chart included
  }
  if (!report) {
    document.getElementById("position-bias-text").textContent = c.status === "failed" ? "No report: the comparison failed." : "The figure appears once the judge has scored every item.";
    document.getElementById("chart-position").hidden = c.status === "failed";
  }
  return ENDED.has(c.status);
}

// ---------------------------------------------------------------------------------------------

document.getElementById("pareto-log").addEventListener("change", () => drawPareto(paretoPoints).catch(() => {}));

let comparisonDone = comparisonId === null;
startPolling(async () => {
  await Promise.all([
    api("/comparisons?limit=100").then(patchList),
    pollPareto(),
    comparisonDone ? null : pollComparison().then((done) => (comparisonDone = done)),
  ]);
  markReady();
  return false; // new comparisons and finished runs can always appear
});
loadPlotly().catch(() => {}); // compiles while the first requests are out; draw() reports a failure
