// A socket.io-client that reconnects by itself, for the recovery tests.
//
//   node recover.mjs '<json options>'      options: {url, token, path?, timeoutMs?}
//
// Prints one JSON line per thing that happens, as it happens: {"type":"connect","id","recovered"}
// on every (re)connection, {"type":"event","name","args"} for every event (args as received:
// a recoverable event's last argument is its offset), {"type":"disconnect","reason"}. It stops
// by itself after timeoutMs, or when its standard input closes.
import { io } from "socket.io-client";

const options = JSON.parse(process.argv[2]);
const print = (line) => process.stdout.write(JSON.stringify(line) + "\n");

const socket = io(options.url, {
  path: options.path ?? "/socket.io",
  auth: { token: options.token },
  transports: ["websocket"],
  reconnectionDelay: 300,
  reconnectionDelayMax: 300,
  randomizationFactor: 0,
});
socket.on("connect", () => print({ type: "connect", id: socket.id, recovered: socket.recovered }));
socket.on("disconnect", (reason) => print({ type: "disconnect", reason }));
socket.on("connect_error", (err) => print({ type: "connect_error", message: err.message }));
socket.onAny((name, ...args) => print({ type: "event", name, args }));

const stop = () => { socket.close(); process.exit(0); };
setTimeout(stop, options.timeoutMs ?? 30000);
process.stdin.on("end", stop);
process.stdin.resume();
