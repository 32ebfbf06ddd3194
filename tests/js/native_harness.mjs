// What the native client library's tests (tests/test_js_native_client.py) run, in Chromium and
// in Node alike: a YektaClient whose every event becomes one JSON-ready line, and commands that
// report their outcome as lines too. The page and tests/js/native_client.mjs only supply the
// WebSocket implementation and where the lines go.
//
// Lines: {type: "connected", socketId, recovered, offset}, {type: "disconnected", code, reason,
// willReconnect, error?}, {type: "reconnecting", attempt, delay, error?}, {type: "error", code,
// message}, {type: "event", name, data, offset}, and for commands {type: "reply", tag, data},
// {type: "rejected", tag, code, retryable, sent}, {type: "state", tag, ...}.

export function start(YektaClient, WebSocket, { url, token, options = {} }, sink) {
  const client = new YektaClient(url, { token, WebSocket, ...options });
  client.on("connected", (data, frame) =>
    sink({
      type: "connected",
      socketId: data.socketId,
      recovered: data.recovered,
      offset: frame.offset,
    }),
  );
  client.on("disconnected", ({ code, reason, willReconnect, error }) =>
    sink({ type: "disconnected", code, reason, willReconnect, error: error?.code }),
  );
  client.on("reconnecting", ({ attempt, delay, error }) =>
    sink({ type: "reconnecting", attempt, delay, error: error?.code }),
  );
  client.on("error", (error) => sink({ type: "error", code: error.code, message: error.message }));
  client.on("*", (name, data, frame) => sink({ type: "event", name, data, offset: frame.offset }));
  client.connect().then(
    (data) => sink({ type: "connect_resolved", socketId: data.socketId }),
    (error) => sink({ type: "connect_rejected", code: error.code }),
  );
  return client;
}

export async function command(client, { op, tag, event, data, timeout }, sink) {
  if (op === "request") {
    try {
      sink({ type: "reply", tag, data: await client.request(event, data, { timeout }) });
    } catch (error) {
      const { code, retryable, sent } = error;
      sink({ type: "rejected", tag, code, retryable, sent });
    }
  } else if (op === "send") {
    sink({ type: "sent", tag, ok: client.send(event, data) });
  } else if (op === "close") {
    client.close();
    sink({ type: "closed", tag });
  } else if (op === "state") {
    const { state, socketId, recovered, lastOffset, recovery } = client;
    sink({ type: "state", tag, state, socketId, recovered, lastOffset, recovery });
  } else {
    throw new Error(`unknown command ${op}`);
  }
}
