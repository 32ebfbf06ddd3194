// The native client library's types (clients/js/index.d.ts) as an app uses them, through the
// package's own "exports": `tsc --noEmit` on this file must pass (tests/test_js_native_client.py),
// and each `@ts-expect-error` line must really be an error.
import {
  CloseCode,
  type ConnectedData,
  type DisconnectedInfo,
  YektaClient,
  YektaError,
} from "@yektayar/ws-client";

type Pushes = { notice: { n: number }; "ai:response:chunk": { messageId: string; chunk: string } };

const client = new YektaClient<Pushes>("ws://127.0.0.1:3500/ws", {
  token: async () => "token",
  WebSocket, // the browser's (lib "dom"); Node's `ws` has no types of its own
  reconnect: { minDelay: 100, maxAttempts: 5, retryCodes: [CloseCode.POLICY] },
  requestTimeout: 5000,
});

const off: () => void = client.on("connected", (data: ConnectedData) => {
  const recovered: boolean = data.recovered;
  const socketId: string = data.socketId;
  void [recovered, socketId];
});
off();
client.on("disconnected", ({ code, willReconnect, error }: DisconnectedInfo) => {
  const final: boolean = !willReconnect && code === CloseCode.SESSION_EXPIRED;
  void [final, error?.code];
});
client.on("reconnecting", ({ attempt, delay }) => void (attempt + delay));
client.on("error", (error) => {
  const retryable: boolean = error.retryable;
  void retryable;
});
client.on("notice", (data) => {
  const n: number = data.n;
  void n;
});
client.once("ai:response:chunk", (data, frame) => void [data.chunk, frame.offset]);
client.on("*", (event: string, data: unknown) => void [event, data]);
client.on("anything:else", (data) => void data);

async function use(): Promise<void> {
  const hello: ConnectedData = await client.connect();
  const echo = await client.request<{ received: unknown }>("echo", { hello }, { timeout: 1000 });
  void echo.received;
  try {
    await client.request("echo", {}, { signal: AbortSignal.timeout(100) });
  } catch (error) {
    if (error instanceof YektaError && error.code === "connection_lost" && error.sent) return;
  }
  const sent: boolean = client.send("message", { text: "hi" });
  const state: "idle" | "connecting" | "open" | "reconnecting" | "closed" = client.state;
  const handle = client.recovery;
  if (handle !== null) new YektaClient("ws://x/ws", { token: "t", resume: handle });
  void [sent, state, client.lastOffset, client.recovered, client.socketId];
  client.close();
}
void use;

// @ts-expect-error: the token is required
new YektaClient("ws://127.0.0.1:3500/ws", {});
// @ts-expect-error: a notice's data is typed by the app's map
client.on("notice", (data) => data.text);
// @ts-expect-error: disconnected carries an info object
client.on("disconnected", (info: string) => info);
