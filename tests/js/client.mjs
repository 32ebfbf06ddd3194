// Drive the gateway with an official JavaScript client, for the Python test suite.
//
//   node client.mjs '<json options>'
//
// options: {protocol: "socket.io" | "ws", url, token?, path?, namespace?, transports?,
//           send: [[event, data], ...], count: N, timeoutMs, tokenVia?: "query"|"header"|"subprotocol"}
// Connects, waits for the `connected` event, sends each event in `send` (Socket.IO: with an
// acknowledgement callback), collects every event until `count` have arrived or the time is up,
// then prints one JSON object {events: [[name, data], ...], acks: [...], error?: {...}} and exits.
import { io } from "socket.io-client";
import WebSocket from "ws";

const options = JSON.parse(process.argv[2]);
const events = [];
const acks = [];
let finished = false;

function finish(extra = {}) {
  if (finished) return;
  finished = true;
  process.stdout.write(JSON.stringify({ events, acks, ...extra }) + "\n");
  process.exit(0);
}

setTimeout(() => finish({ timedOut: true }), options.timeoutMs ?? 5000);

function record(name, data) {
  events.push([name, data]);
  if (events.length >= (options.count ?? 1)) setTimeout(() => finish(), 50);
}

if (options.protocol === "socket.io") {
  const socket = io(options.url + (options.namespace ?? ""), {
    path: options.path ?? "/socket.io",
    auth: options.token === undefined ? undefined : { token: options.token },
    transports: options.transports ?? ["polling", "websocket"],
    reconnection: false,
  });
  socket.onAny((name, data) => {
    record(name, data);
    if (name === "connected") {
      for (const [event, data] of options.send ?? []) {
        socket.emit(event, data, (ack) => acks.push(ack));
      }
    }
  });
  socket.on("connect_error", (err) => finish({ error: { message: err.message, data: err.data ?? null } }));
  socket.io.engine?.on?.("upgrade", () => {});
  process.on("exit", () => socket.close());
} else {
  const via = options.tokenVia ?? "query";
  let url = options.url;
  const wsOptions = {};
  let protocols;
  if (via === "query") url += `?token=${options.token}`;
  if (via === "header") wsOptions.headers = { Authorization: `Bearer ${options.token}` };
  if (via === "subprotocol") protocols = ["yektaws.v1", `bearer.${options.token}`];
  const ws = new WebSocket(url, protocols, wsOptions);
  ws.on("unexpected-response", (_req, res) => {
    let body = "";
    res.on("data", (chunk) => (body += chunk));
    res.on("end", () => finish({ error: { status: res.statusCode, message: body } }));
  });
  ws.on("message", (raw) => {
    const frame = JSON.parse(raw.toString());
    record(frame.event, frame.data);
    if (frame.event === "connected") {
      for (const [event, data] of options.send ?? []) ws.send(JSON.stringify({ event, data }));
    }
  });
  ws.on("close", (code, reason) => finish({ closed: { code, reason: reason.toString() } }));
  ws.on("error", (err) => finish({ error: { message: err.message } }));
}
