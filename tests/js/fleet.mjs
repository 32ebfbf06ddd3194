// A fleet of clients in one Node process, for the chaos tests: the stock socket.io-client 4.8 and
// the gateway's own native client library (clients/js, over `ws`), each reconnecting and resuming
// by itself as an app's would.
//
//   node fleet.mjs '<json {url}>'
//
// Commands come on standard input, one JSON object a line:
//   {op: "open", c, protocol: "socket.io" | "native", token}   a new client numbered c
//   {op: "emit", c, event, data}                               client c emits an event
// Standard input closing closes them all and ends the process.
//
// It prints one JSON line per thing that happens, each with the client's number `c`:
// {c, type: "connect", id, recovered} on every (re)connection, {c, type: "event", name, data,
// offset} for every event (offset null for one without a position), {c, type: "disconnect",
// reason}, {c, type: "connect_error", message}.
import { createInterface } from "node:readline";
import { io } from "socket.io-client";
import WebSocket from "ws";

import { YektaClient } from "@yektayar/ws-client";

const { url } = JSON.parse(process.argv[2]);
const print = (line) => process.stdout.write(JSON.stringify(line) + "\n");
// Reconnect as soon as each library lets a test ask: the fault is tested, not the backoff.
const RETRY_MS = 200;

function socketio(c, token) {
  const socket = io(url, {
    path: "/ws",
    auth: { token },
    transports: ["websocket"],
    reconnectionDelay: RETRY_MS,
    reconnectionDelayMax: RETRY_MS,
    randomizationFactor: 0,
  });
  socket.on("connect", () =>
    print({ c, type: "connect", id: socket.id, recovered: socket.recovered === true }),
  );
  socket.on("disconnect", (reason) => print({ c, type: "disconnect", reason }));
  socket.on("connect_error", (err) => print({ c, type: "connect_error", message: err.message }));
  // A recoverable event carries its position as its last argument, after the data. The greeting
  // is reported as "connect" (above), on both protocols.
  socket.onAny((name, data, offset) => {
    if (name === "connected") return;
    print({ c, type: "event", name, data, offset: typeof offset === "string" ? offset : null });
  });
  return { emit: (event, data) => socket.emit(event, data), close: () => socket.close() };
}

function native(c, token) {
  const client = new YektaClient(`${url}/ws`, {
    token,
    WebSocket,
    reconnect: { minDelay: RETRY_MS, maxDelay: RETRY_MS, jitter: 0 },
  });
  client.on("connected", (data) =>
    print({ c, type: "connect", id: data.socketId, recovered: data.recovered }),
  );
  client.on("disconnected", ({ code, reason }) =>
    print({ c, type: "disconnect", reason: `${code} ${reason}` }),
  );
  client.on("*", (name, data, frame) => {
    if (name === "connected") return;
    print({ c, type: "event", name, data, offset: frame.offset ?? null });
  });
  client.connect().catch((error) => print({ c, type: "connect_error", message: error.code }));
  return { emit: (event, data) => client.send(event, data), close: () => client.close() };
}

const fleet = new Map();
const input = createInterface({ input: process.stdin });
input.on("line", (line) => {
  const command = JSON.parse(line);
  if (command.op === "open") {
    const make = command.protocol === "socket.io" ? socketio : native;
    fleet.set(command.c, make(command.c, command.token));
  } else if (command.op === "emit") {
    fleet.get(command.c).emit(command.event, command.data);
  } else {
    throw new Error(`unknown command ${command.op}`);
  }
});
input.on("close", () => {
  for (const client of fleet.values()) client.close();
  process.exit(0);
});
