// Shared by every page of the dashboard: the API client with its outage banner, the poller,
// formatters (UTC times, US$), and small DOM helpers. Plain ES2020 module, no build step.
"use strict";

export const API = "/api/v1";

// `?refresh_ms=` lets tests poll quickly; people get 3 s. Clamped so a typo cannot hammer the API.
const query = new URLSearchParams(location.search);
export const REFRESH_MS = Math.min(600_000, Math.max(50, Number(query.get("refresh_ms")) || 3000));

export const TERMINAL = new Set(["succeeded", "failed", "cancelled", "stopped"]);

// ---------------------------------------------------------------------------------------------
// API client

/** The API answered with an error status (4xx): a real answer, not an outage. */
export class ApiError extends Error {
  constructor(status, message, detail) {
    super(message);
    this.status = status;
    this.detail = detail;
  }
}

/** No answer (network error, or a 5xx from the service or a proxy): the banner shows. */
export class OfflineError extends Error {}

function setReconnecting(down) {
  const banner = document.getElementById("reconnecting");
  if (banner && banner.hidden !== !down) banner.hidden = !down;
}

/**
 * The messages of an error body. Every error has one shape (orchestrator/api/errors.py):
 * {detail: {message, field, errors: [{field, message}]}}; each mistake of `errors` is one message,
 * named by its field.
 */
export function errorMessages(body, fallback) {
  const detail = body && body.detail;
  if (!detail || typeof detail !== "object" || typeof detail.message !== "string") return [fallback];
  const errors = Array.isArray(detail.errors) ? detail.errors : [];
  if (errors.length > 1) {
    return errors.map((e) => (e.field ? `${e.field}: ${e.message}` : String(e.message)));
  }
  // one message: name the field unless the message already does
  return [detail.field && !detail.message.includes(detail.field) ? `${detail.field}: ${detail.message}` : detail.message];
}

/**
 * fetch + JSON under /api/v1. Any answer hides the reconnecting banner; no answer shows it and
 * throws OfflineError, so a page keeps what it shows and tries again at its next poll.
 */
export async function api(path, { method = "GET", body } = {}) {
  let res;
  try {
    res = await fetch(API + path, {
      method,
      cache: "no-store",
      headers: body === undefined ? {} : { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    setReconnecting(true);
    throw new OfflineError(`${path}: ${err.message || err}`);
  }
  if (res.status >= 500) {
    setReconnecting(true);
    throw new OfflineError(`${path}: HTTP ${res.status}`);
  }
  setReconnecting(false);
  if (res.status === 401) {
    // not signed in, or the sign-in ended: sign in, then come back here
    location.assign(`/signin?next=${encodeURIComponent(location.pathname + location.search)}`);
  }
  const clock = document.getElementById("clock");
  if (clock) clock.textContent = `updated ${utc(new Date()).slice(11)}`;
  let data = null;
  try {
    data = await res.json();
  } catch (_) {
    // an empty or non-JSON body; only an error can have one here
  }
  if (!res.ok) {
    const messages = errorMessages(data, `HTTP ${res.status}`);
    throw new ApiError(res.status, messages.join("; "), data && data.detail);
  }
  return data;
}

/** A query string from an object, skipping empty values; arrays repeat the key. */
export function qs(params) {
  const out = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    for (const v of Array.isArray(value) ? value : [value]) {
      if (v !== undefined && v !== null && v !== "") out.append(key, String(v));
    }
  }
  const text = out.toString();
  return text ? `?${text}` : "";
}

// ---------------------------------------------------------------------------------------------
// Polling

/**
 * Calls `round()` now and then every REFRESH_MS after the previous round finished (so rounds
 * never overlap on a slow API). `round` returns true when nothing can change any more (a
 * finished run, drained): polling stops and body[data-polling] says "stopped". body[data-polls]
 * counts completed rounds, failed ones included, so a test waits for rounds, not for time.
 */
export function startPolling(round) {
  let polls = 0;
  const tick = async () => {
    let done = false;
    try {
      done = (await round()) === true;
    } catch (err) {
      // an outage shows the banner (api() did that); anything else is a bug worth a console line
      if (!(err instanceof OfflineError)) console.error(err);
    }
    polls += 1;
    document.body.dataset.polls = String(polls);
    if (done) {
      document.body.dataset.polling = "stopped";
      return;
    }
    setTimeout(tick, REFRESH_MS);
  };
  document.body.dataset.polling = "on";
  tick();
}

/** body[data-ready="1"] and a performance mark: the first render is complete. */
export function markReady() {
  if (document.body.dataset.ready === "1") return;
  document.body.dataset.ready = "1";
  performance.mark("trainyard-ready");
}

// ---------------------------------------------------------------------------------------------
// Formatters. Times are always UTC with the zone written out; money is US$.

const pad = (n, w = 2) => String(n).padStart(w, "0");

/** A Date from an ISO string (with its offset), unix seconds, or a Date; null stays null. */
export function toDate(value) {
  if (value === null || value === undefined || value === "") return null;
  if (value instanceof Date) return value;
  if (typeof value === "number") return new Date(value * 1000);
  // the API writes "+00:00"; a naive string would otherwise be read as local time
  const text = /[zZ]|[+-]\d\d:?\d\d$/.test(value) ? value : `${value}Z`;
  return new Date(text);
}

/** `2026-11-30 14:03:05 UTC` */
export function utc(value) {
  const d = toDate(value);
  if (!d || Number.isNaN(d.getTime())) return "–";
  return (
    `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
    `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} UTC`
  );
}

/** Milliseconds since the epoch, what plotly's date axes take (it reads them as UTC). */
export function ms(value) {
  const d = toDate(value);
  return d ? d.getTime() : null;
}

/** Digits grouped by thousands with commas (en-US), without Intl: toLocaleString's first call
 * loads ICU's number data, ~30 ms of a cold page's first render. */
const grouped = (digits) => digits.replace(/\B(?=(\d{3})+$)/g, ",");

/** `$1.20`; amounts under a cent keep two significant digits (`$0.0042`). */
export function usd(x) {
  if (x === null || x === undefined || !Number.isFinite(Number(x))) return "–";
  const v = Number(x);
  if (v !== 0 && Math.abs(v) < 0.01) return `$${v.toPrecision(2)}`;
  // toFixed rounds the exact binary value, as Python's f"{x:.2f}" (the CLI) does
  const [whole, cents] = Math.abs(v).toFixed(2).split(".");
  return `$${v < 0 ? "-" : ""}${grouped(whole)}.${cents}`;
}

export const usdPerHour = (x) => (x === null || x === undefined ? "–" : `${usd(x)}/h`);

export function num(x, digits = 3) {
  return x === null || x === undefined || Number.isNaN(Number(x)) ? "–" : Number(x).toFixed(digits);
}

export function int(x) {
  if (x === null || x === undefined) return "–";
  const v = Math.round(Number(x));
  return Number.isFinite(v) ? `${v < 0 ? "-" : ""}${grouped(String(Math.abs(v)))}` : String(v);
}

/** 1.2k, 3.4M, 5.6B: token counts in cards where space is short. */
export function si(x) {
  if (x === null || x === undefined) return "–";
  const v = Number(x);
  for (const [div, unit] of [[1e12, "T"], [1e9, "B"], [1e6, "M"], [1e3, "k"]]) {
    if (Math.abs(v) >= div) return `${(v / div).toFixed(Math.abs(v) >= 100 * div ? 0 : 1)}${unit}`;
  }
  return String(Math.round(v));
}

/** The API's fraction as a percentage: floored, so only a finished run (1.0) reads 100%. */
export function pct(fraction) {
  if (fraction === null || fraction === undefined) return "–";
  return fraction >= 1 ? "100%" : `${Math.floor(fraction * 100)}%`;
}

export function duration(s) {
  if (s === null || s === undefined) return "–";
  const t = Math.max(0, Math.round(s));
  const h = Math.floor(t / 3600);
  const m = Math.floor((t % 3600) / 60);
  const r = t % 60;
  if (h >= 48) return `${Math.floor(h / 24)}d ${pad(h % 24)}h`;
  if (h) return `${h}h ${pad(m)}m`;
  if (m) return `${m}m ${pad(r)}s`;
  return `${r}s`;
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let v = Number(n);
  let i = 0;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i += 1;
  }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// ---------------------------------------------------------------------------------------------
// DOM helpers

/**
 * el("td", {class: "num", "data-col": "cost", onclick: fn}, "text", node, [more]) - attributes
 * by setAttribute (`on*` become listeners; false/null are left out), children flattened.
 */
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Set a node's text only when it changed: the DOM (and any selection in it) stays put. */
export function setText(node, text) {
  const value = String(text);
  if (node.textContent !== value) node.textContent = value;
}

/** Set an attribute only when it changed. */
export function setAttr(node, name, value) {
  if (value === null || value === undefined || value === false) {
    if (node.hasAttribute(name)) node.removeAttribute(name);
  } else if (node.getAttribute(name) !== String(value)) {
    node.setAttribute(name, String(value));
  }
}

export function statusBadge(status) {
  return el("span", { class: `status status-${status}` }, status);
}

/** Patch a badge made by statusBadge() to another status. */
export function setStatusBadge(node, status) {
  setText(node, status);
  setAttr(node, "class", `status status-${status}`);
}

/** A message in a page's notice area (`.notice`), e.g. a 404; cleared with an empty text. */
export function notice(id, text, kind = "error") {
  const node = document.getElementById(id);
  if (!node) return;
  setText(node, text || "");
  setAttr(node, "class", `notice ${kind}`);
  node.hidden = !text;
}

/** Debounce for typing into a filter: one request after the typing stops. */
export function debounce(fn, waitMs) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), waitMs);
  };
}

/** The run spec as YAML-like text (the API gives it as JSON): what the user wrote, in their form. */
export function toYaml(value, indent = "") {
  const scalar = (v) => {
    if (v === null || v === undefined) return "null";
    if (typeof v !== "string") return String(v);
    // quote what YAML would read as something else, or cannot hold bare
    return /^$|^[\s\-?:,[\]{}#&*!|>'"%@`]|: | #|^(true|false|null|yes|no|on|off|~)$|^[-+.\d]/i.test(v) || /\s$/.test(v)
      ? JSON.stringify(v)
      : v;
  };
  const lines = [];
  for (const [key, v] of Object.entries(value)) {
    if (v && typeof v === "object" && !Array.isArray(v)) {
      if (!Object.keys(v).length) lines.push(`${indent}${key}: {}`);
      else lines.push(`${indent}${key}:`, toYaml(v, `${indent}  `));
    } else if (Array.isArray(v)) {
      const flat = v.every((x) => x === null || typeof x !== "object");
      if (flat) lines.push(`${indent}${key}: [${v.map(scalar).join(", ")}]`);
      else lines.push(`${indent}${key}:`, ...v.map((x) => `${indent}  - ${JSON.stringify(x)}`));
    } else {
      lines.push(`${indent}${key}: ${scalar(v)}`);
    }
  }
  return lines.join("\n");
}
