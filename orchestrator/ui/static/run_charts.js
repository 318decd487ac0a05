// A run's charts: loss, learning rate and tokens/s from GET /runs/{id}/series (incremental by
// its cursor), cost accrual and the timeline from GET /runs/{id}/timeline.
//
// The metric series are kept here, all three x columns of them (tokens, time, US$), so the x
// switch re-draws from memory. New points are appended with Plotly.extendTraces; plotly gets
// copies of our arrays, since extendTraces pushes onto the trace's own arrays.
"use strict";

import { api, duration, ms, qs, usd, usdPerHour, utc } from "/ui/common.js";
import { appendSeries, COLORS, draw, layout, lineMode, X_AXES } from "/ui/charts.js";

const METRICS = ["train_loss", "val_loss", "lr", "tokens_per_s"];

/** The three metric charts: which series each draws, named as the contract says. */
const CHARTS = [
  {
    id: "chart-loss",
    y: { title: { text: "loss" } },
    log: true,
    traces: [
      { series: "train_loss", name: "train loss", color: COLORS[0], hover: "%{y:.4f}" },
      // an evaluation is worth a marker, up to a few hundred of them (a long run's are a line)
      { series: "val_loss", name: "val loss", color: COLORS[1], hover: "%{y:.4f}", markersBelow: 400 },
    ],
  },
  {
    id: "chart-lr",
    y: { title: { text: "learning rate" }, exponentformat: "e", hoverformat: ".3e" },
    traces: [{ series: "lr", name: "learning rate", color: COLORS[2], hover: "%{y:.3e}" }],
  },
  {
    id: "chart-tps",
    y: { title: { text: "tokens/s" }, exponentformat: "SI", rangemode: "tozero" },
    traces: [{ series: "tokens_per_s", name: "tokens/s", color: COLORS[3], hover: "%{y:,.0f}" }],
  },
];

export class MetricCharts {
  constructor(runId, { xSelect, logBox, note }) {
    this.runId = runId;
    this.xSelect = xSelect;
    this.logBox = logBox;
    this.note = note;
    this.after = 0;
    this.drawn = false;
    this.downsampled = false;
    this.queue = Promise.resolve();
    this.data = Object.fromEntries(METRICS.map((m) => [m, { tokens: [], time: [], usd: [], y: [] }]));
  }

  /** Runs `task` after the drawing already queued: a redraw (x switch) and an extend must
   * never interleave, or the points appended between them would be drawn twice. */
  enqueue(task) {
    const next = this.queue.then(task);
    this.queue = next.catch(() => {});
    return next;
  }

  /** Reads what is new after the cursor; draws (first time) or extends. Returns the new point count. */
  async poll() {
    const page = await api(`/runs/${encodeURIComponent(this.runId)}/series${qs({ after_id: this.after, max_points: 2000 })}`);
    return this.enqueue(async () => {
      let n = 0;
      let cut = false;
      for (const m of METRICS) {
        const added = appendSeries(this.data[m], page.series[m]);
        n += added.n;
        cut = cut || added.cut;
      }
      this.after = page.next_after_id;
      this.downsampled = this.downsampled || page.downsampled;
      // points dropped after a recovery cannot be taken out by extendTraces: draw anew
      if (!this.drawn || cut) await this.drawAll();
      else if (n) await this.extend(page.series);
      // a long run's history comes grouped into buckets by step; say so next to the charts
      this.note.textContent = this.downsampled ? "long run: older points are drawn as each bucket's min and max" : "";
      return n;
    });
  }

  axis() {
    return X_AXES[this.xSelect.value] || X_AXES.tokens;
  }

  traces(chart) {
    const ax = this.axis();
    return chart.traces.map((t) => {
      const s = this.data[t.series];
      return {
        name: t.name,
        type: "scatter",
        x: s[ax.column].map(ax.toX),
        y: s.y.slice(),
        mode: lineMode(s.y.length, t.markersBelow),
        line: { color: t.color, width: 1.5 },
        marker: { color: t.color, size: t.markersBelow ? 5 : 4 },
        hovertemplate: t.hover,
      };
    });
  }

  layoutOf(chart) {
    const x = this.xSelect.value;
    const log = chart.log && this.logBox.checked;
    return layout({
      x: this.axis().axis,
      y: { ...chart.y, type: log ? "log" : "linear" },
      height: chart.id === "chart-loss" ? 340 : 260,
      // a new x axis or scale starts from a fresh view; plain updates keep the user's zoom
      extra: { uirevision: `${x}-${log}`, showlegend: chart.traces.length > 1 },
    });
  }

  /** Everything from memory, for the x switch and the log toggle (queued behind any extend). */
  redraw() {
    return this.enqueue(() => this.drawAll());
  }

  async drawAll() {
    this.drawn = true;
    for (const chart of CHARTS) await draw(document.getElementById(chart.id), this.traces(chart), this.layoutOf(chart));
  }

  async extend(fresh) {
    const ax = this.axis();
    for (const chart of CHARTS) {
      const node = document.getElementById(chart.id);
      const idx = [];
      const xs = [];
      const ys = [];
      chart.traces.forEach((t, i) => {
        const s = fresh[t.series];
        if (!s.y.length) return;
        idx.push(i);
        xs.push(s[ax.column].map(ax.toX));
        ys.push(s.y.slice());
      });
      if (!idx.length) continue;
      await Plotly.extendTraces(node, { x: xs, y: ys }, idx);
      // past a few dozen points the markers only clutter the line
      for (const i of idx) {
        const t = chart.traces[i];
        const mode = lineMode(this.data[t.series].y.length, t.markersBelow);
        if (node.data[i].mode !== mode) await Plotly.restyle(node, { mode }, [i]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Cost and timeline, both from one GET /runs/{id}/timeline (it is small: a few hundred samples,
// but the dearest read of a round; run.js says how often a live run's page re-reads it),
// re-drawn with Plotly.react, which only touches what changed.

const STATE_COLORS = {
  pending: "#c7ccd4", provisioning: "#9ecae1", bootstrapping: "#6baed6", training: "#2171b5",
  recovering: "#fd8d3c", evaluating: "#74c476", succeeded: "#238b45", failed: "#d62728",
  cancelled: "#b8860b", stopped: "#e6a400",
};

const STATE_ROW = "run state";

const costLayout = () => layout({
  x: X_AXES.time.axis,
  y: { title: { text: "US$" }, tickprefix: "$", rangemode: "tozero", hoverformat: "$,.4f" },
  height: 300,
});

const timelineLayout = (instances) => layout({
  x: { ...X_AXES.time.axis },
  y: { type: "category", autorange: "reversed", categoryorder: "array", categoryarray: [STATE_ROW, ...instances] },
  height: Math.max(220, 120 + (1 + instances.length) * 34),
  extra: { hovermode: "closest", barmode: "overlay", showlegend: false, bargap: 0.35 },
});

export async function pollTimeline(runId, run) {
  const tl = await api(`/runs/${encodeURIComponent(runId)}/timeline`);
  await Promise.all([drawCost(tl, run), drawTimeline(tl, run)]);
  return tl;
}

function drawCost(tl, run) {
  const traces = tl.cost_series
    .filter((s) => s.name !== "total")
    .map((s, i) => ({
      name: s.name, type: "scatter", mode: lineMode(s.time.length), line: { shape: "hv", width: 1.5, color: COLORS[(i + 2) % COLORS.length] },
      x: s.time.map(ms), y: s.usd, hovertemplate: "$%{y:,.4f}",
    }));
  const total = tl.cost_series.find((s) => s.name === "total") || { time: [], usd: [] };
  traces.push({
    name: "total", type: "scatter", mode: lineMode(total.time.length), line: { shape: "hv", width: 2.5, color: COLORS[0] },
    x: total.time.map(ms), y: total.usd, hovertemplate: "$%{y:,.4f}",
  });
  const budget = tl.budget_usd ?? (run.budget && run.budget.max_usd);
  if (budget != null) {
    // across the run's life so far: submission to its end (or now)
    const t0 = ms(run.created_at);
    const t1 = ms(run.finished_at || tl.now);
    traces.push({
      name: "budget", type: "scatter", mode: "lines", x: [t0, t1], y: [budget, budget],
      line: { dash: "dash", color: "#d62728", width: 1.5 }, hovertemplate: "budget $%{y:,.2f}",
    });
  }
  const note = document.getElementById("cost-note");
  note.textContent =
    `total ${usd(tl.total_usd)}` + (tl.other_usd ? ` (incl. ${usd(tl.other_usd)} judge/storage, not in the curves)` : "") +
    (budget != null ? ` · budget ${usd(budget)}` : "") + (tl.instances.length ? "" : " · no instances billed");
  return draw(document.getElementById("chart-cost"), traces, costLayout());
}

function drawTimeline(tl, run) {
  const nowMs = ms(tl.now);
  const startMs = ms(run.created_at);
  const endMs = ms(run.finished_at) || nowMs;
  // a terminal state is a moment: give it a sliver of width so it shows and can be hovered
  const sliver = Math.max(1000, (endMs - startMs) * 0.004);

  const spans = tl.states.map((s) => {
    const a = ms(s.start);
    const b = s.end ? ms(s.end) : nowMs;
    return {
      base: a, width: Math.max(b - a, sliver), color: STATE_COLORS[s.status] || "#999",
      text: `<b>${s.status}</b><br>${utc(s.start)} → ${s.end ? utc(s.end) : "now"}<br>${duration((b - a) / 1000)} · cost ${usd(s.usd)}`,
    };
  });
  const inst = tl.instances.map((i) => {
    const a = ms(i.launched_at);
    const b = ms(i.ended_at) || nowMs;
    return {
      label: i.name, base: a, width: Math.max(b - a, sliver),
      text: `<b>${i.name}</b> (${i.instance_type}, ${i.provider}, ${usdPerHour(i.usd_per_hour)})<br>` +
        `launched ${utc(i.launched_at)}<br>billed from ${i.active_at ? utc(i.active_at) : "never active"}` +
        `${i.ended_at ? ` to ${utc(i.ended_at)}` : " until now"}<br>${i.status} · cost ${usd(i.usd)}`,
    };
  });
  const bar = (name, items, y, colors) => ({
    name, type: "bar", orientation: "h", y, base: items.map((d) => d.base), x: items.map((d) => d.width),
    marker: { color: colors }, hovertext: items.map((d) => d.text), hovertemplate: "%{hovertext}<extra></extra>",
  });
  const traces = [
    bar("states", spans, spans.map(() => STATE_ROW), spans.map((d) => d.color)),
    bar("instances", inst, inst.map((d) => d.label), inst.map(() => "#8c96a8")),
  ];
  return draw(document.getElementById("chart-timeline"), traces, timelineLayout(inst.map((d) => d.label)));
}
