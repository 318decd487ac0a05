// A run's panels other than charts: the summary cards, events (newest first, paged backwards),
// checkpoints, the log (appended to, never rewritten), the spec and the evaluation.
//
// Every panel is patched in place at each poll. Nothing here replaces a node that already
// shows the right thing, so a reader's scroll position and text selection survive updates.
"use strict";

import {
  api, ApiError, bytes, duration, el, int, num, pct, qs, setAttr, setStatusBadge, setText, si,
  statusBadge, TERMINAL, toYaml, usd, usdPerHour, utc,
} from "/ui/common.js";

const enc = encodeURIComponent;

// ---------------------------------------------------------------------------------------------
// Summary

export function patchSummary(run) {
  const field = (name, text, title) => {
    const node = document.querySelector(`#run-summary [data-field="${name}"]`);
    if (!node) return;
    setText(node, text);
    setAttr(node, "title", title || null);
  };
  const p = run.progress;
  const b = run.budget;
  const ended = TERMINAL.has(run.status);
  document.title = `${run.name} · trainyard`;
  setText(document.getElementById("run-name"), run.name);
  setText(document.getElementById("run-id"), run.id);
  const badgeBox = document.getElementById("run-status");
  if (!badgeBox.firstChild) badgeBox.append(statusBadge(run.status));
  setStatusBadge(badgeBox.firstChild, run.status);
  const reason = [run.status_reason, run.cancel_requested && !ended ? "cancel requested" : null, b.stop_reason && `stop: ${b.stop_reason}`];
  setText(document.getElementById("run-reason"), reason.filter(Boolean).join(" · "));

  field("progress", pct(p.fraction), `${int(p.tokens_done)} of ${int(p.target_tokens)} tokens`);
  field("tokens", `${si(p.tokens_done)} / ${si(p.target_tokens)}`, `${int(p.tokens_done)} / ${int(p.target_tokens)}`);
  field("step", int(p.step));
  field("train_loss", num(p.train_loss));
  field("val_loss", num(p.val_loss));
  field("test_loss", num(p.test_loss));
  field("tokens_per_s", int(p.tokens_per_s), p.world_size ? `${p.world_size} processes` : null);
  field("cost", usd(run.cost.usd));
  field("projected", b.max_usd == null ? usd(b.projected_usd) : `${usd(b.projected_usd)} / ${usd(b.max_usd)}`,
    "cost so far + what the instances in use bill until the ETA" + (b.max_hours != null ? ` · max ${b.max_hours} h` : ""));
  document.querySelector('#run-summary [data-field="projected"]').classList.toggle("over", b.max_usd != null && b.projected_usd > b.max_usd);
  field("usd_per_hour", ended ? "–" : usdPerHour(b.usd_per_hour));
  const left = b.eta_s ?? p.eta_s;
  field("eta", ended ? "–" : duration(left), left == null || ended ? null : `ends about ${utc(new Date(Date.now() + left * 1000))}`);
  field("wall", duration(run.wall_s), `${num(b.hours, 2)} h since provisioning began`);
  field("provider", run.instance_type ? `${run.provider} · ${run.instance_type}` : run.provider || "–");
  field("recoveries", int(p.recoveries));
  field("created_at", utc(run.created_at));
  field("finished_at", run.finished_at ? utc(run.finished_at) : "–");
}

// ---------------------------------------------------------------------------------------------
// Events: the newest page first; "older events" reads backwards with before_id; each poll reads
// forwards with after_id and puts what is new on top.

export class Events {
  constructor(runId) {
    this.runId = runId;
    this.tbody = document.querySelector("#events tbody");
    this.more = document.getElementById("events-more");
    this.newest = null; // highest id shown
    this.oldest = null; // lowest id shown
    this.more.addEventListener("click", () => this.older().catch(() => {}));
  }

  row(e) {
    return el("tr", { "data-event-id": e.id },
      el("td", { class: "nowrap" }, utc(e.time)),
      el("td", {}, e.kind),
      el("td", { class: "nowrap" }, e.to_status ? `${e.from_status || "–"} → ${e.to_status}` : ""),
      el("td", { class: "msg" }, e.message));
  }

  async poll() {
    if (this.newest === null) {
      const page = await api(`/runs/${enc(this.runId)}/events${qs({ order: "desc", limit: 50 })}`);
      this.tbody.append(...page.events.map((e) => this.row(e)));
      this.newest = page.events.length ? page.events[0].id : 0;
      this.oldest = page.events.length ? page.events[page.events.length - 1].id : null;
      this.more.hidden = !page.has_more;
      return page.events.length;
    }
    let n = 0;
    // a burst of events since the last poll may span pages: read them all (bounded)
    for (let pages = 0; pages < 10; pages += 1) {
      const page = await api(`/runs/${enc(this.runId)}/events${qs({ after_id: this.newest, limit: 200 })}`);
      for (const e of page.events) this.tbody.prepend(this.row(e)); // ascending: each goes on top
      if (page.events.length) this.newest = page.events[page.events.length - 1].id;
      if (this.oldest === null && page.events.length) this.oldest = page.events[0].id;
      n += page.events.length;
      if (!page.has_more) break;
    }
    return n;
  }

  async older() {
    if (this.oldest === null) return;
    this.more.disabled = true;
    try {
      const page = await api(`/runs/${enc(this.runId)}/events${qs({ order: "desc", before_id: this.oldest, limit: 100 })}`);
      this.tbody.append(...page.events.map((e) => this.row(e)));
      if (page.events.length) this.oldest = page.events[page.events.length - 1].id;
      this.more.hidden = !page.has_more;
    } finally {
      this.more.disabled = false;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Checkpoints: a few dozen at most; re-read whole (every few rounds of a live run: run.js) and
// patched by step (their state moves on_node -> stored -> deleted as uploads finish and
// retention prunes).

export async function pollCheckpoints(runId) {
  const page = await api(`/runs/${enc(runId)}/checkpoints`);
  const tbody = document.querySelector("#checkpoints tbody");
  // a row per (kind, step): the IFT stage's fine-tuned weights share their base's step
  const rows = new Map([...tbody.children].map((tr) => [`${tr.dataset.kind}:${tr.dataset.step}`, tr]));
  // newest first: the one a user usually wants is on top
  const items = [...page.items].sort((a, b) => b.step - a.step);
  let before = tbody.firstChild;
  for (const c of items) {
    let tr = rows.get(`${c.kind}:${c.step}`);
    if (!tr) {
      const ift = c.kind === "ift";
      const cmd = `trainyard checkpoints download ${runId} ${c.step}${ift ? " --ift" : ""}`;
      tr = el("tr", { "data-step": c.step, "data-kind": c.kind },
        el("td", { class: "num" }, int(c.step) + (ift ? " (IFT)" : "")),
        el("td", { class: "num" }, int(c.tokens)),
        el("td", { class: "num", "data-col": "val_loss" }),
        el("td", { class: "num" }, bytes(c.bytes)),
        el("td", { "data-col": "state" }),
        el("td", { class: "nowrap", "data-col": "stored" }),
        el("td", { class: "nowrap" }, el("code", { class: "download-cmd" }, cmd), copyButton(cmd)));
    }
    setText(tr.querySelector('[data-col="val_loss"]'), num(c.val_loss) + (c.best ? " *" : ""));
    setText(tr.querySelector('[data-col="state"]'), c.state.replace("_", " "));
    setText(tr.querySelector('[data-col="stored"]'), c.stored_at ? utc(c.stored_at) : "–");
    // only a stored checkpoint can be downloaded: the others' commands are greyed out
    tr.classList.toggle("muted", c.state !== "stored");
    setAttr(tr.querySelector("code.download-cmd"), "title", c.state === "stored" ? c.uri : `not in the store (${c.state.replace("_", " ")})`);
    if (tr !== before) tbody.insertBefore(tr, before);
    before = tr.nextSibling;
  }
  document.getElementById("checkpoints-empty").hidden = items.length > 0;
}

/** Copies a command; where the clipboard is not allowed (plain http) it selects the text instead. */
function copyButton(text) {
  return el("button", {
    type: "button", class: "copy", title: "copy the command",
    onclick: async (event) => {
      const button = event.currentTarget;
      try {
        await navigator.clipboard.writeText(text);
        button.textContent = "copied";
      } catch (_) {
        const code = button.previousSibling;
        getSelection().selectAllChildren(code);
        button.textContent = "selected";
      }
      setTimeout(() => (button.textContent = "copy"), 1500);
    },
  }, "copy");
}

// ---------------------------------------------------------------------------------------------
// The log: new text is appended as new text nodes, so the text already there (and a selection
// in it) is never touched. It follows the tail only while the reader is at the bottom.

export class Log {
  constructor(runId) {
    this.runId = runId;
    this.pre = document.getElementById("log");
    this.after = null;
    this.drained = false;
  }

  atBottom() {
    const p = this.pre;
    return p.scrollHeight - p.scrollTop - p.clientHeight < 8;
  }

  append(chunks) {
    if (!chunks.length) return;
    const follow = this.after === null || this.atBottom();
    this.pre.append(document.createTextNode(chunks.map((c) => c.text).join("")));
    if (follow) this.pre.scrollTop = this.pre.scrollHeight;
  }

  async poll() {
    let page;
    if (this.after === null) {
      // the last 1,000 chunks: a long run's whole log would be megabytes
      page = await api(`/runs/${enc(this.runId)}/logs${qs({ tail: 1000 })}`);
      this.append(page.chunks);
      this.after = page.next_after_id;
      if (!page.chunks.length) this.pre.dataset.empty = "1";
    } else {
      for (let pages = 0; pages < 10; pages += 1) {
        page = await api(`/runs/${enc(this.runId)}/logs${qs({ after_id: this.after, limit: 1000 })}`);
        this.append(page.chunks);
        this.after = page.next_after_id;
        if (!page.has_more) break;
      }
    }
    if (this.pre.textContent) delete this.pre.dataset.empty;
    this.drained = page.run_terminal && !page.has_more;
  }
}

// ---------------------------------------------------------------------------------------------
// Spec and evaluation

export function showSpec(run) {
  const pre = document.getElementById("spec");
  if (!pre.textContent) pre.textContent = toYaml(run.spec || {});
}

export class Evaluation {
  constructor(runId) {
    this.runId = runId;
    this.answersShown = false;
  }

  async poll(run) {
    const evals = await api(`/runs/${enc(this.runId)}/evaluations`);
    const test = [...evals].reverse().find((e) => e.kind === "test_loss");
    const field = (name, text) => setText(document.querySelector(`#evaluation [data-field="${name}"]`), text);
    field("test_loss", num(test ? test.test_loss : run.progress.test_loss, 4));
    field("bits_per_byte", num(test && test.bits_per_byte, 4));
    field("eval_tokens", int(test && test.tokens));
    field("eval_step", test && test.checkpoint_step != null ? int(test.checkpoint_step) : "–");
    const spec = run.spec || {};
    const iftOn = Boolean(spec.evaluation && spec.evaluation.ift && spec.evaluation.ift.enabled);
    setText(document.getElementById("eval-note"), test ? `evaluated ${utc(test.created_at)}` : TERMINAL.has(run.status) ? "not evaluated" : "not evaluated yet");
    // the answers are read once an IFT evaluation exists, so a run without one never asks
    // (a 404 there would be a console error for nothing)
    if (!this.answersShown && evals.some((e) => e.kind === "ift")) await this.showAnswers();
    if (!this.answersShown) {
      setText(document.getElementById("ift-none"), iftOn && !TERMINAL.has(run.status) ? "no IFT answers yet" : "no IFT answers");
    }
  }

  async showAnswers() {
    let data;
    try {
      data = await api(`/runs/${enc(this.runId)}/answers`);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) return; // no answers: said quietly
      throw err;
    }
    this.answersShown = true;
    const rows = data.answers.map((a, i) => el("tr", { "data-item": i },
      el("td", { class: "num" }, i + 1),
      el("td", { class: "answer-cell" }, a.instruction, a.input ? el("div", { class: "muted" }, a.input) : null),
      el("td", { class: "answer-cell" }, a.output),
      el("td", { class: "answer-cell" }, a.model_response)));
    document.querySelector("#ift-answers tbody").replaceChildren(...rows);
    document.getElementById("ift-wrap").hidden = false;
    document.getElementById("ift-none").hidden = true;
  }
}
