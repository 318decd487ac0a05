// The Plan page (/plan): paste a run spec, POST /api/v1/plans, and see every instance type's
// estimated hours and US$ as a table and as a scatter with the Pareto frontier as a line.
// Nothing here polls: a plan is asked for once per submit. The spec text and provider are kept
// in sessionStorage so a reload does not lose what was typed.
"use strict";

import { api, ApiError, OfflineError, el, errorMessages, int, markReady, num, usd, usdPerHour, duration } from "/ui/common.js";
import { COLORS, draw, layout, loadPlotly } from "/ui/charts.js";

const form = document.getElementById("plan-form");
const specBox = document.getElementById("plan-spec");
const providerBox = document.getElementById("plan-provider");
const submit = document.getElementById("plan-submit");
const status = document.getElementById("plan-status");
const errorBox = document.getElementById("plan-error");

const saved = sessionStorage.getItem("trainyard.plan.spec");
if (saved) specBox.value = saved;
providerBox.value = sessionStorage.getItem("trainyard.plan.provider") || "";

/** Every message of a refused spec, one list item each (a 422 may carry one or several). */
function showErrors(messages) {
  errorBox.replaceChildren(el("b", {}, "The plan was refused:"), el("ul", {}, messages.map((m) => el("li", {}, m))));
  errorBox.hidden = false;
}

function errorList(err) {
  if (err instanceof OfflineError) return ["the service did not answer; try again when it is back"];
  if (err instanceof ApiError) {
    // every mistake of the spec, one each (the error body's `errors`)
    return errorMessages({ detail: err.detail }, err.message);
  }
  return [String(err.message || err)];
}

async function plan(event) {
  event.preventDefault();
  sessionStorage.setItem("trainyard.plan.spec", specBox.value);
  sessionStorage.setItem("trainyard.plan.provider", providerBox.value);
  submit.disabled = true;
  status.textContent = "asking the provider for its types…";
  try {
    const body = { spec: specBox.value, provider: providerBox.value || null };
    const result = await api("/plans", { method: "POST", body });
    errorBox.hidden = true;
    errorBox.replaceChildren();
    render(result);
    status.textContent = "";
  } catch (err) {
    // the table shown belonged to the spec before; it must not pass for this one's
    document.getElementById("plan-result").hidden = true;
    document.querySelector("#plan-table tbody").replaceChildren();
    showErrors(errorList(err));
    status.textContent = "";
  } finally {
    submit.disabled = false;
  }
}

function band(row, key) {
  const b = row.band;
  if (!b) return "";
  return key === "usd" ? ` (${usd(b.usd_low)}–${usd(b.usd_high)})` : ` (${num(b.hours_low, 2)}–${num(b.hours_high, 2)})`;
}

function marks(row, plan) {
  const tags = [];
  if (plan.chosen && plan.chosen.instance_type === row.instance_type) tags.push(el("span", { class: "tag", title: plan.chosen.reason || "" }, "chosen"));
  if (row.cheapest) tags.push(el("span", { class: "tag" }, "cheapest"));
  if (row.fastest) tags.push(el("span", { class: "tag" }, "fastest"));
  if (row.frontier) tags.push(el("span", { class: "tag" }, "frontier"));
  if (!row.fits) tags.push(el("span", { class: "tag warn", title: row.reason || "" }, "does not fit"));
  return tags;
}

function render(plan) {
  document.getElementById("plan-result").hidden = false;
  document.getElementById("plan-title").textContent = `Plan of ${plan.spec_name} on ${plan.provider}`;
  const caps = [plan.max_usd != null ? `budget ${usd(plan.max_usd)}` : null, plan.max_hours != null ? `${plan.max_hours} h` : null].filter(Boolean);
  document.getElementById("plan-summary").textContent =
    `${plan.shape} · ${int(plan.params)} parameters · ${int(plan.train_tokens)} tokens` +
    (caps.length ? ` · ${caps.join(", ")}` : "") + ` · ${plan.records} throughput record(s)`;

  const rows = plan.rows.map((r) =>
    el("tr", { "data-instance-type": r.instance_type, class: r.fits ? null : "muted" },
      el("td", {}, el("b", {}, r.instance_type), el("div", { class: "muted small" }, r.gpu_description)),
      el("td", { class: "num" }, r.nodes > 1 ? `${r.nodes}×${r.gpus}` : r.gpus),
      el("td", { class: "num" }, usdPerHour(r.price_cents_per_hour / 100)),
      el("td", {}, r.regions_with_capacity.length ? r.regions_with_capacity.join(", ") : el("span", { class: "muted" }, "none now")),
      el("td", { title: r.source_detail }, r.source),
      el("td", { class: "num" }, r.micro_batch ?? "–"),
      el("td", { class: "num" }, int(r.tokens_per_s)),
      el("td", { class: "num" }, r.mfu == null ? "–" : `${(r.mfu * 100).toFixed(1)}%`),
      el("td", { class: "num", title: r.total_s == null ? "" : `setup ${duration(r.setup_s)}, training ${duration(r.training_s)}, evaluation ${duration(r.eval_s)}` },
        r.hours == null ? "–" : num(r.hours, 2), el("span", { class: "muted small" }, band(r, "hours"))),
      el("td", { class: "num" }, usd(r.usd), el("span", { class: "muted small" }, band(r, "usd"))),
      el("td", {}, r.within_budget == null ? "–" : r.within_budget ? "within" : el("span", { class: "tag warn" }, "over")),
      el("td", {}, marks(r, plan)),
      el("td", { class: "small notes" }, [r.reason, ...r.notes].filter(Boolean).join(" · "))));
  document.querySelector("#plan-table tbody").replaceChildren(...rows);
  drawChart(plan).catch(() => {
    status.textContent = "the chart could not be drawn: plotly.js did not load (reload the page)";
  });
}

/** US$ against hours: every estimated type as a point, the frontier rows joined by a line. */
function drawChart(plan) {
  const est = plan.rows.filter((r) => r.usd != null && r.hours != null);
  const front = est.filter((r) => r.frontier).sort((a, b) => a.hours - b.hours);
  const hover = "<b>%{text}</b><br>%{x:.2f} h<br>$%{y:,.2f}<extra></extra>";
  const traces = [
    {
      // labels only on the frontier (below): a dozen labelled points would hide each other
      name: "instance types", type: "scatter", mode: "markers",
      x: est.map((r) => r.hours), y: est.map((r) => r.usd), text: est.map((r) => r.instance_type),
      marker: { size: 9, color: COLORS[0], opacity: 0.8 },
      // the estimate's band as error bars: how far off it may be, by where tokens/s comes from
      error_x: { type: "data", symmetric: false, array: est.map((r) => (r.band ? r.band.hours_high - r.hours : 0)), arrayminus: est.map((r) => (r.band ? r.hours - r.band.hours_low : 0)), thickness: 1, width: 0, color: "rgba(120,140,160,0.35)" },
      error_y: { type: "data", symmetric: false, array: est.map((r) => (r.band ? r.band.usd_high - r.usd : 0)), arrayminus: est.map((r) => (r.band ? r.usd - r.band.usd_low : 0)), thickness: 1, width: 0, color: "rgba(120,140,160,0.35)" },
      hovertemplate: hover,
    },
    {
      name: "frontier", type: "scatter", mode: "lines+markers+text",
      x: front.map((r) => r.hours), y: front.map((r) => r.usd), text: front.map((r) => r.instance_type),
      textposition: "top right", textfont: { size: 10, color: COLORS[1] },
      line: { color: COLORS[1] }, marker: { size: 6, color: COLORS[1] }, hovertemplate: hover,
    },
  ];
  const lay = layout({
    x: { title: { text: "wall time (hours)" }, type: "linear", rangemode: "tozero" },
    y: { title: { text: "US$" }, type: "linear", tickprefix: "$", rangemode: "tozero" },
    height: 340,
    extra: { hovermode: "closest", uirevision: plan.shape_key },
  });
  if (plan.max_usd != null) {
    lay.shapes = [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: plan.max_usd, y1: plan.max_usd, line: { dash: "dot", color: "#d62728", width: 1 } }];
  }
  if (!est.length) {
    lay.annotations = [{ text: "no type has an estimate yet: run or probe one to measure it", xref: "paper", yref: "paper", x: 0.5, y: 0.5, showarrow: false, font: { color: "#6b7280" } }];
  }
  return draw(document.getElementById("chart-plan"), traces, lay);
}

form.addEventListener("submit", plan);
// ready once plotly.js is: a plan's chart is then drawn with its table, in the same task
loadPlotly().catch(() => {}).then(markReady);
