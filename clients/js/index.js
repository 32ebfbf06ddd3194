// @yektayar/ws-client: the client of the yektaws gateway's native WebSocket protocol.
//
// One dependency-free ES module for browsers and Node (there with the `ws` package passed as
// `WebSocket`). It connects with the session token as a subprotocol (never in the URL), asks the
// gateway for a recoverable connection, and after a drop reconnects by itself with jittered
// exponential backoff and resumes with the pid and the last offset it saw: the gateway then sends
// every missed event once and in order, before live ones. `request()` matches replies by `id`;
// requests in flight when a connection drops are rejected, never resent (they may have had an
// effect). The wire protocol is the gateway's README, "Connection recovery" (native).

/** The subprotocol the gateway selects; the token travels as a second one, `bearer.<token>`. */
export const SUBPROTOCOL = "yektaws.v1";

/** Close codes the gateway uses (the README's "Close codes (native)"), and 1000 / 1006. */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001, // the server is shutting down (a deploy): reconnect, resume elsewhere
  ABNORMAL: 1006, // no close frame: the connection was lost
  POLICY: 1008, // rate limit exceeded
  TOO_BIG: 1009, // a message over the server's limit
  TOO_SLOW: 1013, // the client read too slowly; the server kept its state
  SESSION_EXPIRED: 4001, // the session ended (or the server API disconnected the user)
});

// Codes after which the client reconnects and resumes: the server went away or restarts (1001,
// 1012), the connection was lost or closed without a status (1005, 1006), a server or proxy
// fault (1011, 1014), the client was too slow (1013). Every other code is final unless the app
// lists it in `reconnect.retryCodes`: 1008 and 1009 would most likely happen again, 4001 means
// the session is over, 1000 and the rest are deliberate.
const RECONNECT_CODES = new Set([1001, 1005, 1006, 1011, 1012, 1013, 1014]);

// The statuses a handshake refusal may reveal (Node's `ws` says "Unexpected server response:
// 401"; a browser says nothing) after which retrying cannot help: the token is not valid (401),
// the page's origin is not allowed (403).
const FINAL_STATUSES = new Map([
  [401, "unauthorized"],
  [403, "forbidden"],
]);
const STATUS_IN_MESSAGE = /Unexpected server response: (\d{3})/;

// RFC 7230 token characters: all a subprotocol, hence `bearer.<token>`, may hold.
const SUBPROTOCOL_CHARS = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

const OPEN = 1; // WebSocket.OPEN, the same in every implementation

/** The defaults of every option (milliseconds). */
export const DEFAULTS = Object.freeze({
  reconnect: Object.freeze({
    minDelay: 500,
    maxDelay: 10000,
    jitter: 0.5,
    maxAttempts: Infinity,
    retryCodes: Object.freeze([]),
  }),
  requestTimeout: 10000,
  connectTimeout: 10000,
  pingInterval: 25000,
  pingTimeout: 10000,
  browserEvents: true,
});

const BUILT_IN = new Set(["connected", "disconnected", "reconnecting", "error"]);
const noop = () => {};

/**
 * An error of the client or the server. `code` is the server's error code (`bad_request`,
 * `unknown_event`, `rate_limited`, ...) or one of the client's own (`not_connected`,
 * `connection_lost`, `timeout`, `closed`, `unauthorized`, `forbidden`, `session_expired`,
 * `connection_closed`, `reconnect_failed`, `token_unavailable`, `bad_url`). `retryable` says whether the same call may succeed
 * later; `sent` whether a request reached the socket (and so may have had an effect).
 */
export class YektaError extends Error {
  constructor(code, message, details = {}) {
    super(message);
    this.name = "YektaError";
    this.code = code;
    this.retryable = details.retryable ?? false;
    if (details.sent !== undefined) this.sent = details.sent;
    if (details.event !== undefined) this.event = details.event;
    if (details.closeCode !== undefined) this.closeCode = details.closeCode;
    if (details.status !== undefined) this.status = details.status;
    if (details.cause !== undefined) this.cause = details.cause;
  }
}

/**
 * A connection to the gateway that stays up: see the README in this folder.
 *
 * States: `idle` (not started), `connecting` (a handshake in progress), `open` (greeted by the
 * server), `reconnecting` (waiting before the next attempt), `closed` (stopped for good; a new
 * `connect()` starts again).
 */
export class YektaClient {
  #url;
  #token;
  #WebSocket;
  #reconnect;
  #requestTimeout;
  #connectTimeout;
  #pingInterval;
  #pingTimeout;
  #browserEvents;

  #state = "idle";
  #ws = null;
  #greeted = false;
  #connectedData = null;
  #handshakeStatus = null; // an HTTP status the implementation revealed for this attempt
  #generation = 0; // bumped by every attempt and by close(): late callbacks check it
  #attempt = 0; // failed attempts since the last greeting
  #retryTimer = null;
  #connectTimer = null;
  #heartbeat = null;
  #heard = true;
  #pingTimer = null;
  #listeners = new Map();
  #pending = new Map(); // request id -> {resolve, reject, timer, event, unlink}
  #nextId = 1;
  #waiters = []; // connect() promises not settled yet
  #unwatchBrowser = null;

  #pid = null;
  #lastOffset = null;
  #socketId = null;
  #recovered = false;

  constructor(url, options = {}) {
    if (typeof url !== "string" && !(url instanceof URL)) {
      throw new TypeError("YektaClient: url must be a string or a URL");
    }
    if (options.token === undefined || options.token === null || options.token === "") {
      throw new TypeError("YektaClient: options.token is required (a string or a function)");
    }
    this.#url = String(url);
    this.#token = options.token;
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== "function") {
      throw new TypeError(
        "YektaClient: no WebSocket implementation; in Node pass `WebSocket` from the `ws` package",
      );
    }
    const reconnect = { ...DEFAULTS.reconnect, ...(options.reconnect ?? {}) };
    if (!(reconnect.minDelay >= 0 && reconnect.maxDelay >= reconnect.minDelay)) {
      throw new RangeError("YektaClient: reconnect needs 0 <= minDelay <= maxDelay");
    }
    if (!(reconnect.jitter >= 0 && reconnect.jitter <= 1)) {
      throw new RangeError("YektaClient: reconnect.jitter must be between 0 and 1");
    }
    if (!(reconnect.maxAttempts >= 0)) {
      throw new RangeError("YektaClient: reconnect.maxAttempts must be >= 0");
    }
    reconnect.retryCodes = new Set(reconnect.retryCodes);
    this.#reconnect = reconnect;
    this.#requestTimeout = options.requestTimeout ?? DEFAULTS.requestTimeout;
    this.#connectTimeout = options.connectTimeout ?? DEFAULTS.connectTimeout;
    this.#pingInterval = options.pingInterval ?? DEFAULTS.pingInterval;
    this.#pingTimeout = options.pingTimeout ?? DEFAULTS.pingTimeout;
    this.#browserEvents = options.browserEvents ?? DEFAULTS.browserEvents;
    if (options.resume) {
      // A state saved by an earlier page (see `recovery`): the first connection resumes it.
      this.#pid = options.resume.pid ?? null;
      this.#lastOffset = options.resume.offset ?? null;
    }
  }

  // -- what the app reads ------------------------------------------------------------------------

  /** `idle`, `connecting`, `open`, `reconnecting` or `closed`. */
  get state() {
    return this.#state;
  }

  /** The server's id of this connection (kept across a successful resume). */
  get socketId() {
    return this.#socketId;
  }

  /** Whether the current connection resumed the previous one (nothing was lost). */
  get recovered() {
    return this.#recovered;
  }

  /** The offset of the last recoverable frame received (opaque; compare only for equality). */
  get lastOffset() {
    return this.#lastOffset;
  }

  /** `{pid, offset}` to resume from, or null: may be stored and given back as `resume`. */
  get recovery() {
    return this.#pid === null ? null : { pid: this.#pid, offset: this.#lastOffset };
  }

  // -- events ------------------------------------------------------------------------------------

  /** Call `listener` for `event`; returns a function that removes it. `"*"` hears every server
   * event as `(event, data, frame)`. */
  on(event, listener) {
    if (typeof listener !== "function")
      throw new TypeError("YektaClient.on: listener must be a function");
    let listeners = this.#listeners.get(event);
    if (listeners === undefined) this.#listeners.set(event, (listeners = new Set()));
    listeners.add(listener);
    return () => this.off(event, listener);
  }

  /** Like `on`, for the next occurrence only (remove it early with the function returned:
   * `off(event, listener)` does not know the wrapper). */
  once(event, listener) {
    const off = this.on(event, (...args) => {
      off();
      listener(...args);
    });
    return off;
  }

  /** Remove one listener, or every listener of `event` when none is given. */
  off(event, listener) {
    if (listener === undefined) this.#listeners.delete(event);
    else this.#listeners.get(event)?.delete(listener);
    return this;
  }

  #emit(event, ...args) {
    const listeners = this.#listeners.get(event);
    if (listeners === undefined) return;
    for (const listener of [...listeners]) {
      try {
        listener(...args);
      } catch (err) {
        // One app listener's bug must not break the connection nor the other listeners.
        report(err);
      }
    }
  }

  // -- connecting ---------------------------------------------------------------------------------

  /**
   * Start (or join) connecting. Resolves with the `connected` data of the first connection
   * (retrying failed handshakes meanwhile); rejects if the client stops for good first (401,
   * a final close code, `maxAttempts` spent, `close()`).
   */
  connect() {
    if (this.#state === "open") return Promise.resolve(this.#connectedData);
    const connected = new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
    if (this.#state === "idle" || this.#state === "closed") {
      this.#attempt = 0;
      this.#watchBrowser();
      this.#open();
    }
    return connected;
  }

  async #open() {
    const generation = ++this.#generation;
    this.#state = "connecting";
    this.#handshakeStatus = null;
    let token;
    try {
      token = typeof this.#token === "function" ? await this.#token() : this.#token;
    } catch (err) {
      if (generation !== this.#generation) return;
      const error = new YektaError("token_unavailable", "the token function failed", {
        retryable: true,
        cause: err,
      });
      this.#emit("error", error);
      this.#retryOrStop(null, error);
      return;
    }
    if (generation !== this.#generation) return; // closed while the token was fetched
    if (typeof token !== "string" || !SUBPROTOCOL_CHARS.test(token)) {
      this.#stop(
        null,
        new YektaError(
          "unauthorized",
          "no usable token (it must be a non-empty string of token characters)",
        ),
      );
      return;
    }
    let ws;
    try {
      ws = new this.#WebSocket(this.#handshakeUrl(), [SUBPROTOCOL, `bearer.${token}`]);
    } catch (err) {
      this.#stop(
        null,
        new YektaError("bad_url", `cannot open ${this.#url}: ${err.message}`, { cause: err }),
      );
      return;
    }
    this.#ws = ws;
    ws.onopen = noop;
    ws.onmessage = (event) => {
      if (ws === this.#ws) this.#receive(event.data);
    };
    ws.onerror = (event) => {
      // A browser tells nothing more; Node's `ws` names the HTTP status of a refused handshake.
      const message = event?.message ?? event?.error?.message ?? "";
      const status = STATUS_IN_MESSAGE.exec(message);
      if (status !== null && ws === this.#ws) this.#handshakeStatus = Number(status[1]);
    };
    ws.onclose = (event) => {
      if (ws === this.#ws) this.#closed(event.code, event.reason ?? "");
    };
    if (this.#connectTimeout > 0 && Number.isFinite(this.#connectTimeout)) {
      this.#connectTimer = setTimeout(
        () => this.#lose("no greeting from the server in time"),
        this.#connectTimeout,
      );
    }
  }

  #handshakeUrl() {
    const url = new URL(this.#url, globalThis.location?.href);
    if (url.protocol === "http:") url.protocol = "ws:";
    else if (url.protocol === "https:") url.protocol = "wss:";
    for (const name of ["recover", "resume", "offset"]) url.searchParams.delete(name);
    if (this.#pid !== null) {
      url.searchParams.set("resume", this.#pid);
      if (this.#lastOffset !== null) url.searchParams.set("offset", this.#lastOffset);
    } else {
      url.searchParams.set("recover", "1");
    }
    return url.href;
  }

  // -- receiving ----------------------------------------------------------------------------------

  #receive(payload) {
    if (typeof payload !== "string") return; // the gateway sends text frames only
    let frame;
    try {
      frame = JSON.parse(payload);
    } catch {
      return;
    }
    if (frame === null || typeof frame !== "object") return;
    this.#heard = true;
    if (this.#pingTimer !== null) {
      clearTimeout(this.#pingTimer); // any frame shows the connection is alive
      this.#pingTimer = null;
    }
    if (typeof frame.offset === "string") this.#lastOffset = frame.offset;
    if (!this.#greeted) {
      if (frame.event === "connected") this.#greet(frame.data ?? {}, frame);
      return;
    }
    if (frame.id !== undefined && frame.id !== null) {
      this.#settle(frame); // a direct reply (a late one, after its timeout, is dropped)
      return;
    }
    if (frame.event === "error") {
      const data = frame.data ?? {};
      this.#emit("error", serverError(data, undefined));
      return;
    }
    this.#emit(frame.event, frame.data, frame);
    this.#emit("*", frame.event, frame.data, frame);
  }

  #greet(data, frame) {
    clearTimeout(this.#connectTimer);
    this.#connectTimer = null;
    const recovery = data.recovery;
    // A gateway with recovery off (or its store down) sends no handle: the next connection
    // then starts afresh.
    this.#pid = recovery && typeof recovery.pid === "string" ? recovery.pid : null;
    if (recovery && typeof recovery.offset === "string") this.#lastOffset = recovery.offset;
    else if (this.#pid === null) this.#lastOffset = null;
    this.#recovered = data.recovered === true;
    this.#socketId = data.socketId ?? null;
    this.#greeted = true;
    this.#state = "open";
    this.#attempt = 0;
    this.#startHeartbeat();
    const connected = { ...data, recovered: this.#recovered };
    this.#connectedData = connected;
    for (const waiter of this.#waiters.splice(0)) waiter.resolve(connected);
    this.#emit("connected", connected, frame);
  }

  // -- requests -----------------------------------------------------------------------------------

  /**
   * Send `event` with `data` and resolve with the data of the direct reply (matched by `id`).
   * Rejects with a YektaError: the server's `error` reply (its `code`), `timeout`,
   * `not_connected` (nothing was sent), `connection_lost` (sent, outcome unknown), `closed`.
   */
  request(event, data, options = {}) {
    const timeout = options.timeout ?? this.#requestTimeout;
    const signal = options.signal;
    return new Promise((resolve, reject) => {
      if (signal?.aborted) {
        reject(signal.reason);
        return;
      }
      if (!this.#greeted) {
        reject(
          new YektaError("not_connected", `not connected (${this.#state}): ${event} not sent`, {
            retryable: true,
            sent: false,
            event,
          }),
        );
        return;
      }
      const id = this.#nextId++;
      const pending = { resolve, reject, timer: null, event, unlink: noop };
      const forget = () => {
        this.#pending.delete(id);
        clearTimeout(pending.timer);
        pending.unlink();
      };
      pending.forget = forget;
      if (timeout > 0 && Number.isFinite(timeout)) {
        pending.timer = setTimeout(() => {
          forget();
          reject(
            new YektaError("timeout", `no reply to ${event} within ${timeout} ms`, {
              retryable: true,
              sent: true,
              event,
            }),
          );
        }, timeout);
      }
      if (signal) {
        const abort = () => {
          forget();
          reject(signal.reason);
        };
        signal.addEventListener("abort", abort, { once: true });
        pending.unlink = () => signal.removeEventListener("abort", abort);
      }
      this.#pending.set(id, pending);
      this.#write(data === undefined ? { event, id } : { event, data, id });
    });
  }

  #settle(frame) {
    const pending = this.#pending.get(frame.id);
    if (pending === undefined) return;
    pending.forget();
    if (frame.event === "error") pending.reject(serverError(frame.data ?? {}, pending.event));
    else pending.resolve(frame.data);
  }

  #failPending(makeError) {
    for (const pending of [...this.#pending.values()]) {
      pending.forget();
      pending.reject(makeError(pending.event));
    }
  }

  /** Send `event` with `data`, no reply expected; false when not connected (nothing sent). */
  send(event, data) {
    if (!this.#greeted) return false;
    return this.#write(data === undefined ? { event } : { event, data });
  }

  #write(frame) {
    const ws = this.#ws;
    if (ws === null || ws.readyState !== OPEN) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  // -- liveness -----------------------------------------------------------------------------------

  // A connection whose path vanished (NAT state dropped, Wi-Fi to mobile data) can look open for
  // minutes: the browser only notices when a write fails. When nothing was heard for a whole
  // `pingInterval`, the client asks (`ping`, answered with `pong`) and drops the connection if
  // nothing comes back within `pingTimeout`, then resumes on a new one.
  #startHeartbeat() {
    this.#heard = true;
    if (!(this.#pingInterval > 0 && Number.isFinite(this.#pingInterval))) return;
    this.#heartbeat = setInterval(() => {
      if (this.#heard) this.#heard = false;
      else this.#probe();
    }, this.#pingInterval);
  }

  /** Check the connection now: a ping that must be answered within `pingTimeout`. */
  #probe() {
    if (!this.#greeted || this.#pingTimer !== null || !(this.#pingTimeout > 0)) return;
    this.#pingTimer = setTimeout(() => this.#lose("no answer to ping"), this.#pingTimeout);
    this.#write({ event: "ping", id: this.#nextId++ }); // its pong is a reply nobody waits for
  }

  /** Give up on the current socket as if it had been lost (1006), then reconnect. */
  #lose(reason) {
    const ws = this.#ws;
    if (ws === null) return;
    this.#closed(CloseCode.ABNORMAL, reason);
    // Its close handshake could wait on a dead path for long: `ws` can drop it at once.
    try {
      if (typeof ws.terminate === "function") ws.terminate();
      else ws.close();
    } catch {
      // already closing
    }
  }

  // -- the end of a connection ----------------------------------------------------------------------

  #release() {
    const ws = this.#ws;
    this.#ws = null;
    if (ws !== null) {
      // Late events of this socket are ignored; no-op handlers, not null: Node's `ws` throws an
      // 'error' event that nobody listens to.
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = noop;
    }
    clearTimeout(this.#connectTimer);
    clearInterval(this.#heartbeat);
    clearTimeout(this.#pingTimer);
    this.#connectTimer = this.#heartbeat = this.#pingTimer = null;
    const wasOpen = this.#greeted;
    this.#greeted = false;
    return { ws, wasOpen };
  }

  #closed(code, reason) {
    const { wasOpen } = this.#release();
    this.#failPending(
      (event) =>
        new YektaError(
          "connection_lost",
          `the connection dropped before the reply to ${event}; it may or may not have been applied`,
          {
            retryable: true,
            sent: true,
            event,
          },
        ),
    );
    const status = this.#handshakeStatus;
    let error = null;
    if (!wasOpen && status !== null && FINAL_STATUSES.has(status)) {
      error = new YektaError(
        FINAL_STATUSES.get(status),
        `the gateway refused the handshake with ${status}`,
        { status },
      );
    } else if (code === CloseCode.SESSION_EXPIRED) {
      this.#pid = null; // that state is gone for good
      error = new YektaError("session_expired", reason || "session expired", { closeCode: code });
    } else if (!RECONNECT_CODES.has(code) && !this.#reconnect.retryCodes.has(code)) {
      error = new YektaError(
        "connection_closed",
        `closed by the server with ${code}${reason ? ` (${reason})` : ""}`,
        { closeCode: code },
      );
    }
    const ended = { code, reason };
    if (error !== null) {
      this.#stop(ended, error);
      return;
    }
    this.#retryOrStop(wasOpen ? ended : null, null);
  }

  #retryOrStop(ended, cause) {
    this.#attempt += 1;
    if (this.#attempt > this.#reconnect.maxAttempts) {
      this.#stop(
        ended,
        new YektaError(
          "reconnect_failed",
          `gave up after ${this.#reconnect.maxAttempts} attempts`,
          { retryable: true, cause },
        ),
      );
      return;
    }
    const delay = this.#delay(this.#attempt);
    this.#state = "reconnecting";
    const generation = ++this.#generation;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      if (generation === this.#generation) this.#open();
    }, delay);
    if (ended !== null) this.#emit("disconnected", { ...ended, willReconnect: true });
    this.#emit("reconnecting", {
      attempt: this.#attempt,
      delay,
      ...(cause ? { error: cause } : {}),
    });
  }

  /** Jittered exponential backoff: minDelay * 2^(attempt-1), capped, less up to `jitter` of it. */
  #delay(attempt) {
    const { minDelay, maxDelay, jitter } = this.#reconnect;
    const base = Math.min(maxDelay, minDelay * 2 ** (attempt - 1));
    return Math.round(base * (1 - jitter * Math.random()));
  }

  /** Retry now if waiting for the next attempt (the network came back, the page is visible). */
  #retryNow() {
    if (this.#state !== "reconnecting") return;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#open();
  }

  #stop(ended, error) {
    this.#release();
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#generation += 1;
    this.#state = "closed";
    this.#unwatch();
    for (const waiter of this.#waiters.splice(0)) waiter.reject(error);
    this.#emit("error", error);
    this.#emit("disconnected", {
      code: ended?.code ?? CloseCode.ABNORMAL,
      reason: ended?.reason ?? error.message,
      willReconnect: false,
      error,
    });
  }

  /**
   * Close for good (a close frame with `code`, 1000 by default): no reconnect, and the server
   * drops the connection's state. Requests in flight reject with `closed`. `connect()` may start
   * again afterwards, as a new connection.
   */
  close(code = CloseCode.NORMAL, reason = "") {
    if (this.#state === "closed" || this.#state === "idle") {
      this.#state = "closed";
      return;
    }
    const { ws } = this.#release();
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#generation += 1;
    this.#state = "closed";
    this.#pid = null;
    this.#lastOffset = null;
    this.#unwatch();
    if (ws !== null) {
      try {
        ws.close(code, reason);
      } catch {
        ws.close(); // a code a WebSocket may not send (only 1000 and 3000-4999 are allowed)
      }
    }
    const error = new YektaError("closed", "the client was closed", { closeCode: code });
    this.#failPending(
      (event) =>
        new YektaError("closed", `the client was closed before the reply to ${event}`, {
          sent: true,
          event,
        }),
    );
    for (const waiter of this.#waiters.splice(0)) waiter.reject(error);
    this.#emit("disconnected", { code, reason, willReconnect: false });
  }

  // -- the page's hints ------------------------------------------------------------------------------

  #watchBrowser() {
    const page = globalThis.window;
    if (
      !this.#browserEvents ||
      this.#unwatchBrowser !== null ||
      typeof page?.addEventListener !== "function"
    )
      return;
    const doc = page.document;
    // Back online, or back in front: a waiting client retries at once, an open one checks that
    // its connection survived (the path may have changed underneath it).
    const wake = () => {
      if (this.#state === "reconnecting") this.#retryNow();
      else if (this.#state === "open") this.#probe();
    };
    const onVisible = () => {
      if (doc.visibilityState === "visible") wake();
    };
    page.addEventListener("online", wake);
    doc?.addEventListener?.("visibilitychange", onVisible);
    this.#unwatchBrowser = () => {
      page.removeEventListener("online", wake);
      doc?.removeEventListener?.("visibilitychange", onVisible);
    };
  }

  #unwatch() {
    this.#unwatchBrowser?.();
    this.#unwatchBrowser = null;
  }
}

function serverError(data, event) {
  const code = typeof data.code === "string" ? data.code : "error";
  const message = typeof data.error === "string" ? data.error : code;
  // Only a rate limit passes by itself; the other codes (bad_request, unknown_event,
  // internal_error) would fail again, or might apply twice.
  return new YektaError(code, message, { retryable: code === "rate_limited", sent: true, event });
}

function report(err) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(err);
  else
    setTimeout(() => {
      throw err;
    });
}
