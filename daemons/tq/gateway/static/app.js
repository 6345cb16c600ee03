// The tq dashboard (tq-gateway's GET /). Plain JavaScript, nothing fetched from elsewhere.
// Data: GET /api/v1/whoami (what the caller may do: at the start, every RIGHTS_EVERY ms and after a refused action),
// the live summary (SSE, GET /api/v1/live: one a second, the newest only), and pages of 20 dead jobs from
// GET /api/v1/jobs. Every request that changes something carries X-TQ-Page: 1
// (the gateway refuses a cookie-authenticated one without it). Text from tq goes in as text, never as HTML.
"use strict";

const OPEN_STATES = ["queued", "delayed", "deferred", "assigned", "running", "failed"];
const FINAL = ["done", "dead", "cancelled"];
const COLOURS = {done: "#2e7d32", dead: "#c62828", cancelled: "#8d8d8d"};
const PAGE = 20;          // dead jobs a page
const HISTORY = 120;      // seconds the chart shows
const RIGHTS_EVERY = 5000;  // ms between two reads of what the caller may do (with the live summary)

const view = {
  readOnly: true,
  maySteer: false,  // pause, resume, retry anyone's job (root, an admin: whoami)
  uid: null,  // the caller's: Retry is offered on its own jobs
  rights: {at: 0, every: RIGHTS_EVERY, loading: false, again: false},  // whoami: last asked when (ms), how often
  started: false,  // the page is drawn: a change of rights redraws its buttons
  job: null,  // the job the detail shows
  dead: {after: null, newer: [], last: null, queue: "", task: "", count: null, loading: false, again: false},
  chart: {last: null, points: []},
  source: null,
  drawn: {},  // what each live table shows now, as JSON
  pending: null,  // the newest summary, not drawn yet
};

const $ = (id) => document.getElementById(id);

// An element with attributes and children (strings become text nodes).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== null && value !== undefined && value !== false) node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, error) {
    super(error.message);
    this.status = status;
    this.code = error.code;
  }
}

async function api(method, path, body) {
  const init = {method, credentials: "same-origin", headers: {"Accept": "application/json", "X-TQ-Page": "1"}};
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (resp.status === 401) { window.location.assign("/"); }  // the token went: the login form
  if (resp.status === 403 && method !== "GET") rights().catch(() => {});  // refused: are the buttons still right?
  if (!resp.ok) {
    throw new ApiError(resp.status, (data && data.error) || {code: "internal", message: `${resp.status} ${resp.statusText}`});
  }
  return data;
}

function say(text, isError) {
  const box = $("message");
  box.textContent = text;
  box.className = isError ? "error" : "note";
  box.hidden = !text;
}

// An action's button: disabled while its request runs; the outcome is said in the message line.
function action(label, cls, run) {
  const button = el("button", {type: "button", class: `act ${cls}`});
  button.textContent = label;
  button.addEventListener("click", async () => {
    button.disabled = true;
    try { say(await run(), false); } catch (e) { say(e.message, true); } finally { button.disabled = false; }
  });
  return button;
}

// ---- formatting -----------------------------------------------------------------------------------------------

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${seconds.toFixed(1)}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${Math.floor(seconds % 60)}s`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h ${Math.floor(seconds % 3600 / 60)}m`;
  return `${Math.floor(seconds / 86400)}d ${Math.floor(seconds % 86400 / 3600)}h`;
}

// A queue's rate in the unit (/s, /m, /h) that counts it in whole jobs, else the first that counts one: 1/h.
function rate(perSecond) {
  const counts = [[perSecond, "s"], [perSecond * 60, "m"], [perSecond * 3600, "h"]];
  const whole = counts.find(([n]) => n >= 1 && Math.abs(n - Math.round(n)) < 1e-6 * n);
  if (whole) return `${Math.round(whole[0])}/${whole[1]}`;
  const [n, unit] = counts.find(([m]) => m >= 1) || counts[2];
  return `${Number(n.toPrecision(6))}/${unit}`;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function when(epoch) {
  if (!epoch) return "–";
  const d = new Date(epoch * 1000);
  const pad = (x) => String(x).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function jobLink(id) {
  if (id === null || id === undefined) return "–";
  return el("a", {href: `#job-${id}`, class: "job-link", "data-job": id, onclick: (e) => { e.preventDefault(); showJob(id); }}, `#${id}`);
}

function fill(tbody, rows, empty, columns) {
  tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", {colspan: columns, class: "empty"}, empty))]));
}

// ---- the live summary -----------------------------------------------------------------------------------------

function follow() {
  const source = new EventSource("/api/v1/live");
  view.source = source;
  source.onmessage = (e) => summary(JSON.parse(e.data));
  source.addEventListener("end", () => { source.close(); window.location.assign("/"); });
  source.onerror = async () => {
    live(false, "reconnecting");
    if (source.readyState === EventSource.CLOSED) {  // refused (not a dropped connection): ask why, then again
      try { await api("GET", "/api/v1/whoami"); } catch (e) { say(e.message, true); }
      setTimeout(follow, 5000);
    }
  };
}

function live(up, text) {
  const badge = $("live");
  badge.textContent = text;
  badge.className = up ? "badge up" : "badge down";
}

// A summary's counters go into the chart's data at once; the page is drawn at the next animation frame from the
// newest summary only, so summaries that arrive while the tab is hidden or busy are drawn once, not one by one.
function summary(s) {
  if (!s.error) chartAdd(s);
  const waiting = view.pending !== null;
  view.pending = s;
  if (!waiting) window.requestAnimationFrame(render);
}

function render() {
  const s = view.pending;
  view.pending = null;
  if (s.error) {
    live(false, s.error.message);
    return;
  }
  live(true, "live");
  if (!view.rights.loading && Date.now() - view.rights.at >= view.rights.every) rights().catch(() => {});
  $("states").textContent = Object.entries(s.states).filter(([, n]) => n).map(([k, n]) => `${k} ${n}`).join(" · ");
  queues(s.queues);
  workers(s.workers);
  draw();
  const dead = s.states.dead || 0;
  if (view.dead.count !== null && dead !== view.dead.count && view.dead.after === null) {
    deadJobs();  // the first page follows the dead jobs as they change; older pages stay put
  }
  view.dead.count = dead;
}

// Redraw a table only when what it shows changed (a button is not replaced under the pointer every second).
function changed(key, list) {
  const text = JSON.stringify(list);
  if (view.drawn[key] === text) return false;
  view.drawn[key] = text;
  return true;
}

function queues(list) {
  if (!changed("queues", list)) return;
  const rows = list.map((q) => {
    const limits = [q.concurrency !== null ? `${q.concurrency} at once` : null, q.rate !== null ? rate(q.rate) : null];
    const buttons = !view.maySteer ? null : q.paused
      ? action("Resume", "resume", async () => { await api("POST", `/api/v1/queues/${encodeURIComponent(q.queue)}/resume`); return `queue ${q.queue} resumed`; })
      : action("Pause", "pause", async () => { await api("POST", `/api/v1/queues/${encodeURIComponent(q.queue)}/pause`); return `queue ${q.queue} paused`; });
    const status = q.paused ? el("span", {class: "badge down"}, "paused")
      : q.unserved ? el("span", {class: "badge warn"}, "no worker") : el("span", {class: "badge up"}, "active");
    return el("tr", {"data-queue": q.queue}, el("td", {}, q.queue),
      ...OPEN_STATES.map((s) => el("td", {class: "num"}, q.states[s] || 0)),
      el("td", {class: "num"}, age(q.oldest_queued_age)), el("td", {}, limits.filter(Boolean).join(", ") || "–"),
      el("td", {}, status), el("td", {}, buttons));
  });
  fill($("queues").tBodies[0], rows, "no queues", 11);
}

function workers(list) {
  if (!changed("workers", list.map((w) => ({...w, seen_ago: null})))) return;
  const rows = list.map((w) => el("tr", {"data-worker": w.instance}, el("td", {}, w.instance),
    el("td", {}, el("span", {class: `badge ${w.state === "live" ? "up" : "down"}`}, w.state)),
    el("td", {}, (w.queues || []).join(", ")), el("td", {}, jobLink(w.running)), el("td", {class: "num"}, w.done),
    el("td", {class: "num"}, bytes(w.rss_bytes)),
    el("td", {class: "num"}, w.cpu_percent === null || w.cpu_percent === undefined ? "–" : `${w.cpu_percent.toFixed(1)}%`)));
  fill($("workers").tBodies[0], rows, "no workers", 7);
}

// ---- the chart: jobs per second by final state, from the deltas of the host's counters -------------------------

function chartAdd(s) {
  const last = view.chart.last;
  view.chart.last = s;
  if (!last || last.host.start_time !== s.host.start_time || s.time <= last.time) return;  // (a restarted host: a new base)
  const dt = s.time - last.time;
  const rates = {};
  for (const state of FINAL) rates[state] = Math.max(0, ((s.finished[state] || 0) - (last.finished[state] || 0)) / dt);
  view.chart.points.push({time: s.time, rates});
  while (view.chart.points.length && view.chart.points[0].time < s.time - HISTORY) view.chart.points.shift();
}

// The y axis up to the highest rate `most`: 0 to a top at or above it in about 5 even steps of 1, 2 or 5 times a
// power of ten, never less than 1 (a job per second: the rates are counts over about a second), so every label is a
// whole number: 0 1 (quiet), 0 1 2 3, 0 2 4 6 8, 0 5 10 15 20 25, 0 50 100 150.
function axis(most) {
  const target = Math.max(most, 1) / 5;
  let step = 1;
  if (target > 1) {
    const power = 10 ** Math.floor(Math.log10(target));
    step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= target);
  }
  const top = Math.max(step, Math.ceil(most / step) * step);
  return Array.from({length: top / step + 1}, (_, i) => i * step);
}

function draw() {
  const canvas = $("chart");
  const ctx = canvas.getContext("2d");
  const points = view.chart.points;
  const w = canvas.width, h = canvas.height, left = 48, bottom = 20, top = 8;
  ctx.clearRect(0, 0, w, h);
  let most = 0;
  for (const p of points) for (const state of FINAL) most = Math.max(most, p.rates[state]);
  const ticks = axis(most);
  const ceiling = ticks[ticks.length - 1];
  const now = points.length ? points[points.length - 1].time : 0;
  const x = (t) => left + (w - left - 4) * (1 - (now - t) / HISTORY);
  const y = (v) => h - bottom - (h - bottom - top) * v / ceiling;
  ctx.font = "11px sans-serif";
  ctx.fillStyle = "#666";
  ctx.strokeStyle = "#e3e3e3";
  ctx.lineWidth = 1;
  for (const v of ticks) {
    ctx.beginPath(); ctx.moveTo(left, y(v)); ctx.lineTo(w - 4, y(v)); ctx.stroke();
    ctx.fillText(String(v), 4, y(v) + 4);
  }
  for (const s of [120, 90, 60, 30, 0]) ctx.fillText(s ? `-${s}s` : "now", x(now - s) - (s ? 12 : 20), h - 4);
  ctx.lineWidth = 2;
  for (const state of FINAL) {
    ctx.strokeStyle = COLOURS[state];
    ctx.beginPath();
    points.forEach((p, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, x(p.time), y(p.rates[state])));
    ctx.stroke();
  }
  const latest = points.length ? points[points.length - 1].rates : {};
  $("legend").replaceChildren(...FINAL.map((state) => el("span", {class: "key"},
    el("span", {class: "swatch", "data-state": state}), `${state} ${(latest[state] || 0).toFixed(1)}/s`)));
}

// ---- dead jobs: server-side pages of 20, filtered by queue and task -----------------------------------------

function deadFilters() {
  const f = {};
  if (view.dead.queue) f.queue = view.dead.queue;
  if (view.dead.task) f.task = view.dead.task;
  return f;
}

// One request for the dead jobs at a time: asked again while one is out, the page asks once more when it is back
// (with the filters and page as they are then), so answers never overlap or arrive out of order.
async function deadJobs() {
  if (view.dead.loading) {
    view.dead.again = true;
    return;
  }
  view.dead.loading = true;
  try {
    do {
      view.dead.again = false;
      await deadPage();
    } while (view.dead.again);
  } finally {
    view.dead.loading = false;
  }
}

async function deadPage() {
  const params = new URLSearchParams({state: "dead", limit: String(PAGE), ...deadFilters()});
  if (view.dead.after !== null) params.set("after", String(view.dead.after));
  let data;
  try { data = await api("GET", `/api/v1/jobs?${params}`); } catch (e) { say(e.message, true); return; }
  const rows = data.jobs.map((j) => el("tr", {"data-job": j.id}, el("td", {}, jobLink(j.id)), el("td", {}, j.task),
    el("td", {}, j.queue), el("td", {class: "num"}, `${j.attempts}/${j.retries + 1}`), el("td", {}, when(j.finished_at)),
    el("td", {class: "error-text", title: j.error || ""}, (j.error || "").slice(0, 160)),
    el("td", {}, mayRetry(j) ? action("Retry", "retry", () => retry(j.id)) : null)));
  fill($("dead").tBodies[0], rows, "no dead jobs", 7);
  view.dead.last = data.jobs.length ? data.jobs[data.jobs.length - 1].id : null;
  $("older").disabled = data.jobs.length < PAGE;
  $("newer").disabled = view.dead.after === null;
  $("page").textContent = view.dead.after === null ? "newest" : `below #${view.dead.after}`;
}

function mayRetry(job) {  // as tq-host decides: its submitter, root and admins (a read-only token: nobody)
  return !view.readOnly && (view.maySteer || (view.uid !== null && job.submitter === view.uid));
}

async function retry(id) {
  await api("POST", `/api/v1/jobs/${id}/retry`);
  deadJobs();
  return `job ${id} retried`;
}

function setupDead() {
  $("dead-filter").addEventListener("submit", (e) => {
    e.preventDefault();
    view.dead.queue = $("filter-queue").value.trim();
    view.dead.task = $("filter-task").value.trim();
    view.dead.after = null;
    view.dead.newer = [];
    deadJobs();
  });
  $("older").addEventListener("click", () => {
    if (view.dead.last === null) return;
    view.dead.newer.push(view.dead.after);
    view.dead.after = view.dead.last;
    deadJobs();
  });
  $("newer").addEventListener("click", () => {
    view.dead.after = view.dead.newer.length ? view.dead.newer.pop() : null;
    deadJobs();
  });
  $("retry-all").addEventListener("click", async () => {
    const f = deadFilters();
    const which = Object.entries(f).map(([k, v]) => `${k} ${v}`).join(", ");
    if (!window.confirm(`Retry every dead job${which ? ` of ${which}` : ""}?`)) return;
    try {
      const reply = await api("POST", "/api/v1/jobs/retry", {state: "dead", ...f});
      const notYours = reply.not_yours ?? reply.refused;
      let refused = notYours ? `; ${notYours} matching job(s) are not yours to change` : "";
      if (reply.refused > notYours) refused += `; ${reply.refused - notYours} refused: ${reply.reasons.join("; ")}`;
      say(`${reply.ids.length} job(s) retried${refused}`, Boolean(reply.refused) && !reply.ids.length);
      view.dead.after = null;
      view.dead.newer = [];
      deadJobs();
    } catch (e) { say(e.message, true); }
  });
}

// ---- a job's detail -------------------------------------------------------------------------------------------

const DETAIL = ["state", "task", "queue", "args", "payload", "result", "error", "attempts", "retries", "priority",
  "timeout", "worker", "submitter", "created_at", "run_at", "started_at", "finished_at", "parent", "unique", "handler", "usage"];

async function showJob(id) {
  let job;
  try { job = (await api("GET", `/api/v1/jobs/${id}`)).job; } catch (e) { say(e.message, true); return; }
  view.job = job;
  $("job-title").textContent = `Job #${job.id}`;
  const rows = DETAIL.filter((k) => job[k] !== null && job[k] !== undefined).map((k) => {
    const value = k.endsWith("_at") ? when(job[k]) : typeof job[k] === "object" ? JSON.stringify(job[k], null, 1) : String(job[k]);
    return el("tr", {}, el("th", {}, k), el("td", {}, el("pre", {}, value)));
  });
  $("job-fields").tBodies[0].replaceChildren(...rows);
  jobActions(job);
  if (!$("job").open) $("job").showModal();
}

function jobActions(job) {
  const canRetry = mayRetry(job) && (job.state === "dead" || job.state === "cancelled");
  $("job-actions").replaceChildren(...(canRetry ? [action("Retry", "retry", async () => {
    const text = await retry(job.id);
    $("job").close();
    return text;
  })] : []));
}

// ---- what the caller may do -----------------------------------------------------------------------------------

// GET /api/v1/whoami: at the start, again every view.rights.every ms with the live summary, and at once when an
// action is refused (403). What a token may do changes with tq-host's rules and groups ([access] admins, the
// user's groups, at tq-host's reload), and the buttons follow. One request at a time: asked again while one is
// out (a refusal), it asks once more when that one is back.
async function rights() {
  const r = view.rights;
  if (r.loading) {
    r.again = true;
    return;
  }
  r.loading = true;
  try {
    do {
      r.again = false;
      r.at = Date.now();
      if (took(await api("GET", "/api/v1/whoami")) && view.started) redraw();
    } while (r.again);
  } finally {
    r.loading = false;
  }
}

// Take whoami's answer; true if what the page may offer changed.
function took(me) {
  const before = [view.readOnly, view.maySteer, view.uid].join();
  view.readOnly = Boolean(me.read_only);
  view.maySteer = me.may_steer === true;
  view.uid = typeof me.uid === "number" ? me.uid : null;
  $("who").textContent = `${me.user}${me.token ? ` (token ${me.token})` : ""}${me.read_only ? " · read-only" : ""}`;
  $("retry-all").hidden = view.readOnly;
  document.body.classList.toggle("read-only", view.readOnly);
  return before !== [view.readOnly, view.maySteer, view.uid].join();
}

// The buttons as the caller's rights are now: the live tables at the next summary, the dead jobs, the detail.
function redraw() {
  view.drawn = {};
  deadJobs();
  if (view.job !== null && $("job").open) jobActions(view.job);
}

// ---- start ----------------------------------------------------------------------------------------------------

async function start() {
  setupDead();
  try { await rights(); } catch (e) { say(e.message, true); }
  $("retry-all").hidden = view.readOnly;
  document.body.classList.toggle("read-only", view.readOnly);
  draw();
  deadJobs();
  follow();
  view.started = true;
}

start();
