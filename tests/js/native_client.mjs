// The native client library (clients/js) in Node, with the `ws` package as its WebSocket.
//
//   node native_client.mjs '<json {url, token, options?}>'
//
// Prints one JSON line per thing that happens (see native_harness.mjs) and runs the commands it
// reads from standard input, one JSON object a line; it stops when standard input closes.
import { createInterface } from "node:readline";
import WebSocket from "ws";

import { YektaClient } from "@yektayar/ws-client"; // clients/js, through its "exports"
import { command, start } from "./native_harness.mjs";

const print = (line) => process.stdout.write(JSON.stringify(line) + "\n");
const client = start(YektaClient, WebSocket, JSON.parse(process.argv[2]), print);

const input = createInterface({ input: process.stdin });
input.on("line", (line) => command(client, JSON.parse(line), print));
input.on("close", () => {
  client.close();
  process.exit(0);
});
