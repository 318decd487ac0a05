// plotly.js helpers shared by the pages: one look for every chart, x axes with units, and the
// update path that never redraws from scratch (Plotly.react diffs; extendTraces appends).
// plotly.js itself is a classic script (window.Plotly): the basic bundle checked in under
// static/vendor/, which the shell preloads (`link#plotly-js`) and loadPlotly() runs once a page
// has sent its first requests, so compiling it overlaps the API's work instead of preceding it.
"use strict";

import { OfflineError } from "/ui/common.js";

let plotlyLoading = null;

/**
 * window.Plotly, once plotly.js has run: the first call adds its script (the shell's preloaded
 * URL), later calls share the promise. A page calls it right after starting its first requests;
 * draw() awaits it, so summary and tables show before plotly is ready and the charts after.
 * A failed load (an outage) rejects with OfflineError and is tried again at the next call.
 */
export function loadPlotly() {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  if (!plotlyLoading) {
    plotlyLoading = new Promise((resolve, reject) => {
      const link = document.getElementById("plotly-js");
      const script = document.createElement("script");
      script.src = link ? link.href : "/ui/vendor/plotly-basic.min.js";
      script.async = true;
      script.onload = () => (window.Plotly ? resolve(window.Plotly) : reject(new Error("plotly.js did not define Plotly")));
      script.onerror = () => {
        plotlyLoading = null;
        script.remove();
        reject(new OfflineError("plotly.js did not load"));
      };
      document.head.append(script);
    });
  }
  return plotlyLoading;
}

export const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];

// responsive: plotly resizes with its container (width 100% in style.css), down to 400 px
export const CONFIG = {
  responsive: true,
  displaylogo: false,
  modeBarButtonsToRemove: ["lasso2d", "select2d", "toImage"],
};

/**
 * The three x axes a metric can be drawn against; the series endpoint returns all three columns,
 * so switching re-draws from memory. Plotly reads epoch milliseconds on a date axis as UTC.
 */
export const X_AXES = {
  tokens: {
    column: "tokens",
    axis: { title: { text: "tokens" }, type: "linear", exponentformat: "B", hoverformat: ",.0f" },
    toX: (v) => v,
  },
  time: {
    column: "time",
    axis: { title: { text: "wall time (UTC)" }, type: "date", hoverformat: "%Y-%m-%d %H:%M:%S UTC" },
    toX: (seconds) => seconds * 1000,
  },
  usd: {
    column: "usd",
    axis: { title: { text: "US$" }, type: "linear", tickprefix: "$", hoverformat: "$,.4f" },
    toX: (v) => v,
  },
};

/** The layout every chart starts from; `uirevision` keeps the user's zoom across updates. */
export function layout({ x, y, height = 300, extra = {} }) {
  return {
    height,
    autosize: true,
    margin: { l: 64, r: 16, t: 32, b: 52 },
    font: { family: "system-ui, sans-serif", size: 12, color: "#222" },
    paper_bgcolor: "#fff",
    plot_bgcolor: "#fff",
    hovermode: "x unified",
    legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" },
    uirevision: "keep",
    // ticklabeloverflow "allow": automargin makes room for the labels already, and plotly's default
    // ("hide past div") measures each label after the draw, a forced layout per label (a third
    // of a run page's drawing time)
    xaxis: { automargin: true, ticklabeloverflow: "allow", gridcolor: "#eee", zeroline: false, ...x },
    yaxis: { automargin: true, ticklabeloverflow: "allow", gridcolor: "#eee", ...y },
    ...extra,
  };
}

/** First draw, or an update that diffs against what is drawn (zoom and hidden traces kept);
 * waits for plotly.js first if it is still loading. */
export async function draw(node, traces, lay) {
  const plotly = window.Plotly || (await loadPlotly());
  if (node.data) return plotly.react(node, traces, lay, CONFIG);
  return plotly.newPlot(node, traces, lay, CONFIG);
}

/** A line's mode: with few points the markers carry it (one point draws no line at all); past
 * `markersBelow` they only clutter it, and each is an SVG element of its own to draw. */
export const lineMode = (n, markersBelow = 60) => (n < markersBelow ? "lines+markers" : "lines");

export const COLUMNS = ["tokens", "time", "usd", "y"];

/**
 * Appends a page of one series (columnar: tokens, time, usd, y) to what a page holds. After a
 * recovery the steps past the checkpoint are trained again and their old points are gone from
 * the API: new points then start at or below tokens already held, and the held ones from there
 * on are dropped first. Returns {n: points added, cut: whether held points were dropped}.
 */
export function appendSeries(into, more) {
  let cut = false;
  if (!more || !more.y.length) return { n: 0, cut };
  const first = more.tokens[0];
  let keep = into.tokens.length;
  while (keep > 0 && into.tokens[keep - 1] >= first) keep -= 1;
  if (keep < into.tokens.length) {
    for (const key of COLUMNS) into[key].length = keep;
    cut = true;
  }
  for (const key of COLUMNS) {
    const src = more[key];
    // a loop, not push(...src): spreading 100k+ values overflows the call stack
    for (let i = 0; i < src.length; i += 1) into[key].push(src[i]);
  }
  return { n: more.y.length, cut };
}
