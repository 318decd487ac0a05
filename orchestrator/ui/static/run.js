// The run page (/runs/{id}): the summary, charts, timeline, evaluation, checkpoints, events,
// log and spec of one run, polled every REFRESH_MS.
//
// One poll round reads the run first, then the rest in parallel. A round that began with the run
// already finished reads everything that run will ever have (its end is written after its last
// metric, log and event), so once such a round drained every cursor polling stops: a finished
// run's page makes no more requests.
//
// What a round reads. Every round: the run, and what is new after the page's cursors (series,
// events, log): small reads whatever the run's length. The slow-changing panels (timeline and
// cost, checkpoints, evaluations: whole re-reads, the timeline the dearest) are read in the
// first round, in every round whose run status differs from the one they were last read under
// (a new state span or instance, a recovery, the evaluation, the end: what changes them most),
// and otherwise one of them every SLOW_EVERY rounds, staggered so no round reads more than one
// (the cost curve's last step and a checkpoint's upload state then lag by at most SLOW_EVERY
// rounds, 15 s at 3 s; the summary's cost and progress are current every round). A live round
// is then 4 requests, not 7, which no longer queue behind each other in the one server process.
"use strict";

import { api, ApiError, markReady, notice, startPolling, TERMINAL } from "/ui/common.js";
import { loadPlotly } from "/ui/charts.js";
import { MetricCharts, pollTimeline } from "/ui/run_charts.js";
import { Evaluation, Events, Log, patchSummary, pollCheckpoints, showSpec } from "/ui/run_panels.js";

const runId = decodeURIComponent(location.pathname.replace(/^\/runs\//, "").replace(/\/$/, ""));
const xSelect = document.getElementById("x-axis");
const logBox = document.getElementById("log-scale");

// the chart settings live in the URL (?x=time&log=1), so a reload keeps them
const params = new URLSearchParams(location.search);
if (["tokens", "time", "usd"].includes(params.get("x"))) xSelect.value = params.get("x");
logBox.checked = params.get("log") === "1";

const charts = new MetricCharts(runId, { xSelect, logBox, note: document.getElementById("series-note") });
const events = new Events(runId);
const log = new Log(runId);
const evaluation = new Evaluation(runId);
let finalRoundDone = false;
let rounds = 0; // rounds begun
let slowStatus = null; // the run's status when the slow panels were last all read after it
const SLOW_EVERY = 5;

function saveChartSettings() {
  const u = new URL(location.href);
  if (xSelect.value === "tokens") u.searchParams.delete("x");
  else u.searchParams.set("x", xSelect.value);
  if (logBox.checked) u.searchParams.set("log", "1");
  else u.searchParams.delete("log");
  history.replaceState(null, "", u);
}

// switching x or the scale redraws from memory: no request
xSelect.addEventListener("change", () => {
  saveChartSettings();
  charts.redraw();
});
logBox.addEventListener("change", () => {
  saveChartSettings();
  charts.redraw();
});

async function round() {
  const n = rounds;
  rounds += 1;
  let run;
  try {
    run = await api(`/runs/${encodeURIComponent(runId)}`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      notice("run-notice", `There is no run with id ${runId}.`);
      markReady();
      return true; // nothing will ever appear here
    }
    throw err;
  }
  const ended = TERMINAL.has(run.status);
  // independent reads: in parallel, so a round costs one round trip, not several; the whole
  // series (the first round's longest read) goes first
  const reads = [charts.poll(), events.poll(), log.poll()];
  // the slow panels: all of them under a status they were not read under (the first round's
  // included), else one of them every SLOW_EVERY rounds while the run lives
  const allSlow = run.status !== slowStatus;
  const due = (k) => allSlow || (!ended && n % SLOW_EVERY === k);
  if (due(0)) reads.push(pollTimeline(runId, run));
  if (due(1)) reads.push(pollCheckpoints(runId));
  if (due(2)) reads.push(evaluation.poll(run));
  // plotly.js compiles while the first requests are out (the shell only preloaded it)
  if (n === 0) loadPlotly().catch(() => {}); // a failed load: draw() tries again and reports
  patchSummary(run);
  showSpec(run);
  await Promise.all(reads);
  if (allSlow) slowStatus = run.status;
  markReady();
  finalRoundDone = ended && log.drained;
  return finalRoundDone;
}

startPolling(round);
