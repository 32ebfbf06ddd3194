// yektaws operator console. Pulls a JSON snapshot every two seconds and draws it; no build step,
// nothing loaded from elsewhere. Every value from the server is written with textContent, never
// as HTML. A 401 (cookie expired, key changed) reloads the page, which then shows the login form.
"use strict";

const POLL_MS = 2000;
const WINDOW_S = 15 * 60; // the most the charts show (what every node keeps)
const MIN_SPAN_S = 60; // the least: a fresh node's few samples are not stretched edge to edge
const PAGE = 25;

const state = {
  fields: [],
  rows: [], // cluster series rows, oldest first, as the server sends them
  lastT: 0,
  conn: { cursors: [null], protocol: "" },
  users: { cursors: [null] },
  inspected: null,
  polling: false,
};

const $ = (id) => document.getElementById(id);
const num = (v) => (v === undefined || v === null ? "–" : Number(v).toLocaleString("en-US"));
const rate = (v) => (v >= 100 ? Math.round(v).toLocaleString("en-US") : Number(v).toFixed(1));
const sum = (obj) => Object.values(obj || {}).reduce((a, b) => a + b, 0);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    if (cell instanceof Node) {
      const td = document.createElement("td");
      td.append(cell);
      tr.append(td);
    } else if (Array.isArray(cell)) {
      tr.append(el("td", cell[0], cell[1]));
    } else {
      tr.append(el("td", cell));
    }
  }
  return tr;
}

function fill(tableId, rows, empty, columns) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren(...rows);
  if (!rows.length) {
    const td = el("td", empty, "empty");
    td.colSpan = columns;
    body.append(el("tr"));
    body.lastChild.append(td);
  }
}

function badge(text, good) {
  const cls = good === true ? "ok" : good === false ? "bad" : "warn";
  return el("span", text, `badge ${cls}`);
}

function since(iso) {
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} d`;
}

async function api(path, options = {}) {
  const response = await fetch(path, { cache: "no-store", ...options });
  if (response.status === 401) {
    window.location.reload();
    throw new Error("logged out");
  }
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function userLink(userId) {
  if (userId === null || userId === undefined) return el("span", "anonymous", "muted");
  const a = el("a", userId);
  a.href = "#inspector";
  a.dataset.user = userId;
  a.addEventListener("click", (event) => {
    event.preventDefault();
    inspect(userId);
  });
  return a;
}

// -- stats ---------------------------------------------------------------------------------------

async function poll() {
  if (state.polling) return;
  state.polling = true;
  try {
    const stats = await api(`api/stats?since=${state.lastT}`);
    absorb(stats);
    render(stats);
    if (!document.hidden) await Promise.all([loadConnections(), loadUsers(), refreshInspector()]);
    $("updated").textContent = `updated ${new Date().toLocaleTimeString("en-GB")}`;
  } catch (error) {
    $("cluster-state").className = "pill bad";
    $("cluster-state").textContent = `no answer: ${error.message}`;
  } finally {
    state.polling = false;
  }
}

function absorb(stats) {
  state.fields = stats.fields;
  for (const r of stats.series) {
    if (r[0] > state.lastT) state.rows.push(r);
  }
  if (state.rows.length) state.lastT = state.rows[state.rows.length - 1][0];
  const oldest = state.lastT - WINDOW_S;
  while (state.rows.length && state.rows[0][0] < oldest) state.rows.shift();
}

function render(stats) {
  const t = stats.totals;
  const native = sum(t.connections["native-websocket"]);
  const sio = t.connections["socket.io"] || {};
  $("t-connections").textContent = num(native + sum(sio));
  $("t-connections-split").textContent =
    `native ${num(native)} · Socket.IO ${num(sio.websocket || 0)} ws, ${num(sio.polling || 0)} polling`;
  $("t-users").textContent = num(t.usersOnline);
  $("t-users-note").textContent = stats.nodes.length > 1 ? "summed over nodes" : "distinct users";
  $("t-events-in").textContent = rate(t.eventsInPerSecond);
  $("t-events-out").textContent = rate(t.eventsOutPerSecond);
  $("t-ai").textContent = num(t.aiStreams);
  $("t-rejects").textContent = rate(t.rejectsPerSecond);
  $("t-rejects-total").textContent = `${num(sum(t.rejects))} since start`;
  $("t-lag").textContent = `${Math.round(t.loopLagSeconds * 1000)} ms`;
  const outcomes = t.recoveries.outcomes || {};
  const recovered = outcomes.recovered || 0;
  const attempts = sum(outcomes);
  $("t-recoveries").textContent = num(attempts);
  $("t-recoveries-split").textContent = attempts
    ? `${num(recovered)} recovered · ${num(attempts - recovered)} not`
    : "no resume yet";

  const healthy = stats.nodes.every((n) => n.sessionStore === "ok" && n.broker !== "degraded");
  const pill = $("cluster-state");
  const count = `${stats.nodes.length} node${stats.nodes.length === 1 ? "" : "s"}`;
  if (!stats.complete) {
    pill.className = "pill warn";
    pill.textContent = `${count} · ${stats.missing.length || "some"} not answering`;
  } else {
    pill.className = healthy ? "pill ok" : "pill bad";
    pill.textContent = healthy ? `${count} · healthy` : `${count} · degraded`;
  }

  fill(
    "nodes",
    stats.nodes.map((n) => {
      const c = n.connections || {};
      return row([
        n.node + (n.node === stats.answeredBy ? " (answering)" : "") + (n.draining ? " (draining)" : ""),
        n.version,
        n.startedAt ? since(n.startedAt) : "–",
        [num(sum(c["native-websocket"])), "n"],
        [num(sum(c["socket.io"])), "n"],
        [num(n.usersOnline), "n"],
        [rate(n.eventsInPerSecond || 0), "n"],
        [rate(n.eventsOutPerSecond || 0), "n"],
        [num(n.aiStreams), "n"],
        [`${Math.round((n.loopLagSeconds || 0) * 1000)} ms`, "n"],
        badge(n.sessionStore, n.sessionStore === "ok" ? true : n.sessionStore === "unknown" ? null : false),
        badge(n.broker, n.broker === "ok" ? true : n.broker === "local" ? null : false),
      ]);
    }),
    "no node answered",
    12,
  );
  $("nodes-missing").textContent = stats.missing.length
    ? `Live but not answering: ${stats.missing.join(", ")}`
    : "";

  const byCount = (obj) => Object.entries(obj).sort((a, b) => b[1] - a[1]);
  fill("rejects", byCount(t.rejects).map(([k, v]) => row([k, [num(v), "n"]])), "no handshake refused", 2);
  fill("recoveries", byCount(outcomes).map(([k, v]) => row([k, [num(v), "n"]])), "no resume attempted", 2);
  const r = t.recoveries;
  $("recovery-log").textContent =
    `recovery log: ${num(r.logEntries || 0)} events held, oldest ${Math.round(r.logAgeSeconds || 0)} s; ` +
    `${num(r.replayedEvents || 0)} replayed, ${num(r.statesSaved || 0)} states saved`;

  drawCharts();
}

// -- charts: small inline SVG, one polyline per series -------------------------------------------

function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function chart(id, columns, classes, format) {
  const svg = $(id);
  const ns = "http://www.w3.org/2000/svg";
  const index = columns.map((name) => state.fields.indexOf(name));
  const end = state.lastT || Date.now() / 1000;
  const first = state.rows.length ? state.rows[0][0] : end;
  const span = Math.min(WINDOW_S, Math.max(MIN_SPAN_S, end - first));
  const start = end - span;
  let max = 0;
  for (const r of state.rows) for (const i of index) max = Math.max(max, r[i]);
  max = niceMax(max);
  const shapes = [];
  for (const y of [2, 45, 88]) {
    const line = document.createElementNS(ns, "line");
    line.setAttribute("x1", "0");
    line.setAttribute("x2", "300");
    line.setAttribute("y1", String(y));
    line.setAttribute("y2", String(y));
    line.setAttribute("class", "grid");
    shapes.push(line);
  }
  index.forEach((i, n) => {
    const points = state.rows
      .filter((r) => r[0] >= start)
      .map((r) => `${(((r[0] - start) / span) * 300).toFixed(1)},${(88 - (r[i] / max) * 86).toFixed(1)}`);
    if (points.length === 1) points.unshift(points[0].replace(/^[^,]+/, "0"));
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("class", classes[n]);
    shapes.push(line);
  });
  svg.replaceChildren(...shapes);
  const ago = span >= 120 ? `−${Math.round(span / 60)} min` : `−${Math.round(span)} s`;
  $(id.replace("c-", "a-")).replaceChildren(el("span", ago), el("span", `max ${format(max)}`), el("span", "now"));
}

function drawCharts() {
  const count = (v) => num(v);
  chart("c-connections", ["native", "socketio"], ["s0", "s1"], count);
  chart("c-events", ["eventsIn", "eventsOut"], ["s0", "s1"], rate);
  chart("c-users", ["users"], ["s0"], count);
  chart("c-rejects", ["rejects"], ["s2"], rate);
  chart("c-ai", ["aiStreams"], ["s0"], count);
  chart("c-lag", ["loopLag"], ["s2"], (v) => `${v} s`);
}

// -- connections and users, one page at a time ---------------------------------------------------

// One page of a list: `list` holds the cursors of the pages before (and the filters); `prefix`
// names its table and its First / Next buttons.
async function loadPage(list, route, prefix, filters, toRow, empty, columns) {
  const cursor = list.cursors[list.cursors.length - 1];
  const query = new URLSearchParams({ limit: PAGE, ...filters });
  if (cursor) query.set("cursor", cursor);
  const page = await api(`api/${route}?${query}`);
  list.next = page.nextCursor;
  fill(route, page.items.map(toRow), empty, columns);
  $(`${prefix}-next`).disabled = !page.nextCursor;
  $(`${prefix}-first`).disabled = list.cursors.length === 1;
  $(`${prefix}-page`).textContent = `page ${list.cursors.length}`;
}

function loadConnections() {
  const filters = state.conn.protocol ? { protocol: state.conn.protocol } : {};
  const toRow = (item) =>
    row([userLink(item.userId), item.protocol, item.transport, item.peer, item.node, since(item.connectedAt)]);
  return loadPage(state.conn, "connections", "conn", filters, toRow, "no connection", 6);
}

function loadUsers() {
  const toRow = (item) =>
    row([
      userLink(item.userId),
      [num(item.connections), "n"],
      Object.entries(item.protocols).map(([p, n]) => `${p} ${n}`).join(", "),
      item.nodes.join(", "),
    ]);
  return loadPage(state.users, "users", "users", {}, toRow, "no user online", 4);
}

// -- the user inspector --------------------------------------------------------------------------

async function inspect(userId) {
  state.inspected = String(userId).trim();
  $("inspect-user").value = state.inspected;
  $("inspect-message").textContent = "";
  await refreshInspector();
  $("inspector").scrollIntoView({ block: "nearest" });
}

async function refreshInspector() {
  const userId = state.inspected;
  if (!userId) return;
  const body = await api(`api/users/${encodeURIComponent(userId)}`);
  // Not while a row's button waits for its confirmation: redrawing would disarm it.
  if (userId !== state.inspected || $("inspect-table").querySelector('[data-armed="yes"]')) return;
  $("inspect-result").hidden = false;
  $("inspect-title").textContent = `User ${userId}: ${body.connections.length} connection${body.connections.length === 1 ? "" : "s"}`;
  $("inspect-nodes").textContent = `asked ${body.nodes.length} node(s)${body.complete ? "" : ", some did not answer"}`;
  fill(
    "inspect-table",
    body.connections.map((c) => {
      const button = el("button", "Disconnect", "quiet");
      button.type = "button";
      button.addEventListener("click", () => disconnect({ socketId: c.socketId }, button));
      return row([[c.socketId, "mono"], c.protocol, c.transport, c.node, c.connectedAt, button]);
    }),
    "not connected anywhere",
    6,
  );
  $("disconnect-user").disabled = body.connections.length === 0;
}

// A disconnect button asks once more in place ("Confirm") instead of a modal dialog.
function armed(button) {
  if (button.dataset.armed === "yes") return true;
  const label = button.textContent;
  button.dataset.armed = "yes";
  button.textContent = "Confirm";
  setTimeout(() => {
    button.dataset.armed = "";
    button.textContent = label;
  }, 5000);
  return false;
}

async function disconnect(target, button) {
  if (!armed(button)) return;
  const reason = $("disconnect-reason").value.trim();
  try {
    const body = await api("api/disconnect", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(reason ? { ...target, reason } : target),
    });
    $("inspect-message").textContent = `Disconnected (${body.localConnections} on the answering node, broker ${body.broker}).`;
  } catch (error) {
    $("inspect-message").textContent = `Disconnect failed: ${error.message}`;
  }
  await refreshInspector();
}

// -- wiring --------------------------------------------------------------------------------------

function pager(list, load, first, next) {
  $(first).addEventListener("click", () => {
    list.cursors = [null];
    load();
  });
  $(next).addEventListener("click", () => {
    if (list.next) list.cursors.push(list.next);
    load();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  pager(state.conn, loadConnections, "conn-first", "conn-next");
  pager(state.users, loadUsers, "users-first", "users-next");
  $("conn-protocol").addEventListener("change", (event) => {
    state.conn.protocol = event.target.value;
    state.conn.cursors = [null];
    loadConnections();
  });
  $("inspect-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if ($("inspect-user").value.trim()) inspect($("inspect-user").value);
  });
  $("disconnect-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (state.inspected) disconnect({ user: state.inspected }, $("disconnect-user"));
  });
  poll();
  setInterval(poll, POLL_MS);
});
