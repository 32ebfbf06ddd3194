// Types of @yektayar/ws-client (index.js). Hand-written: the package has no build step.

/** The subprotocol the gateway selects; the token travels as `bearer.<token>` beside it. */
export declare const SUBPROTOCOL: "yektaws.v1";

/** Close codes the gateway uses, and 1000 / 1006. */
export declare const CloseCode: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  ABNORMAL: 1006;
  POLICY: 1008;
  TOO_BIG: 1009;
  TOO_SLOW: 1013;
  SESSION_EXPIRED: 4001;
}>;

export interface ReconnectOptions {
  /** Delay before the first retry, doubled for each further one (ms, default 500). */
  minDelay?: number;
  /** Longest delay between two attempts (ms, default 10000). */
  maxDelay?: number;
  /** Up to this fraction of each delay is taken off at random (0..1, default 0.5). */
  jitter?: number;
  /** Failed attempts in a row before giving up (default Infinity; 0: never retry). */
  maxAttempts?: number;
  /** Close codes that also lead to a reconnect, e.g. [1008] to come back after a rate-limit
   * close (1001, 1005, 1006, 1011-1014 always do). */
  retryCodes?: readonly number[];
}

/** What the client uses of a WebSocket (the browser's, or Node's `ws` package). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: { data: any }) => void) | null;
  onerror: ((event: any) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  terminate?(): void;
}

/** A WebSocket class: the browser's, `ws`'s, any whose instances behave as WebSocketLike. */
export type WebSocketConstructor = abstract new (url: string, protocols: string[]) => any;

export interface YektaClientOptions {
  /** The session token, or a function giving one (called before every attempt: a refreshed
   * token is used on the next reconnect). Sent as the `bearer.<token>` subprotocol. */
  token: string | (() => string | Promise<string>);
  /** The WebSocket implementation (default: globalThis.WebSocket). In Node: `ws`'s default export. */
  WebSocket?: WebSocketConstructor;
  reconnect?: ReconnectOptions;
  /** Milliseconds a `request()` waits for its reply (default 10000; 0: for ever). */
  requestTimeout?: number;
  /** Milliseconds from opening a socket to the server's `connected` greeting (default 10000). */
  connectTimeout?: number;
  /** After this many ms without a frame the client pings, and again each period (default 25000;
   * 0: no heartbeat). */
  pingInterval?: number;
  /** Milliseconds a ping may go unanswered before the connection counts as lost (default 10000). */
  pingTimeout?: number;
  /** Where `window` exists: retry at once when the page goes online or becomes visible, and
   * check an open connection then (default true). */
  browserEvents?: boolean;
  /** A state to resume on the first connection (what `client.recovery` returned earlier). */
  resume?: RecoveryHandle;
}

export declare const DEFAULTS: Readonly<{
  reconnect: Readonly<Required<ReconnectOptions>>;
  requestTimeout: number;
  connectTimeout: number;
  pingInterval: number;
  pingTimeout: number;
  browserEvents: boolean;
}>;

export interface RecoveryHandle {
  pid: string;
  offset: string | null;
}

/** A top-level frame as the gateway sends it. */
export interface Frame<D = unknown> {
  event: string;
  data: D;
  /** On a direct reply: the id of the request it answers. */
  id?: string | number;
  /** On a recoverable frame: its position (opaque). */
  offset?: string;
}

/** The `connected` greeting's data. */
export interface ConnectedData {
  message: string;
  socketId: string;
  isLoggedIn: boolean;
  protocol: "native-websocket";
  /** True when this connection resumed the previous one: nothing was missed. False: reload the
   * app's state from the API (the window passed, the log was trimmed, ...). */
  recovered: boolean;
  recovery?: RecoveryHandle & { offset: string };
  [key: string]: unknown;
}

export interface DisconnectedInfo {
  code: number;
  reason: string;
  /** False: the client stopped for good (this is then its last event). */
  willReconnect: boolean;
  /** Why it stopped, when it stopped by itself. */
  error?: YektaError;
}

export interface ReconnectingInfo {
  /** The number of the attempt about to be made (1 for the first retry). */
  attempt: number;
  /** Milliseconds until it is made. */
  delay: number;
  error?: YektaError;
}

export type ClientState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export type ErrorCode =
  // the server's error replies
  | "bad_frame"
  | "unknown_event"
  | "bad_request"
  | "rate_limited"
  | "internal_error"
  // the client's own
  | "not_connected"
  | "connection_lost"
  | "timeout"
  | "closed"
  | "unauthorized"
  | "forbidden"
  | "session_expired"
  | "connection_closed"
  | "reconnect_failed"
  | "token_unavailable"
  | "bad_url";

export declare class YektaError extends Error {
  constructor(code: string, message: string, details?: Partial<YektaError>);
  readonly name: "YektaError";
  /** The server's error code, or one of the client's own (see ErrorCode). */
  readonly code: ErrorCode | (string & {});
  /** Whether the same call may succeed later. */
  readonly retryable: boolean;
  /** For a request: whether it reached the socket (then it may have had an effect). */
  readonly sent?: boolean;
  /** The event of the request this error answers. */
  readonly event?: string;
  /** The WebSocket close code that ended the client. */
  readonly closeCode?: number;
  /** The HTTP status of a refused handshake, where the implementation reveals it (Node's `ws`). */
  readonly status?: number;
}

export interface BuiltInEvents {
  connected: (data: ConnectedData, frame: Frame<ConnectedData>) => void;
  disconnected: (info: DisconnectedInfo) => void;
  reconnecting: (info: ReconnectingInfo) => void;
  error: (error: YektaError) => void;
}

/** The listener of `K`: a built-in event's, `"*"`'s, or a server event's (typed by `Events`). */
export type Listener<Events, K extends string> = K extends keyof BuiltInEvents
  ? BuiltInEvents[K]
  : K extends "*"
    ? (event: string, data: unknown, frame: Frame) => void
    : K extends keyof Events
      ? (data: Events[K], frame: Frame<Events[K]>) => void
      : (data: any, frame: Frame) => void;

export interface RequestOptions {
  /** Milliseconds to wait for the reply (default: the client's requestTimeout). */
  timeout?: number;
  /** Aborting rejects the request with the signal's reason (the reply is then ignored). */
  signal?: AbortSignal;
}

/**
 * A connection to the gateway that reconnects and resumes by itself.
 *
 * `Events` maps the app's server event names to their data, e.g.
 * `new YektaClient<{ notice: { text: string } }>(url, { token })`.
 */
export declare class YektaClient<Events extends Record<string, unknown> = Record<string, any>> {
  constructor(url: string | URL, options: YektaClientOptions);

  readonly state: ClientState;
  readonly socketId: string | null;
  readonly recovered: boolean;
  readonly lastOffset: string | null;
  /** What to resume from (may be stored and passed back as the `resume` option), or null. */
  readonly recovery: RecoveryHandle | null;

  /** Resolves with the first `connected` data; rejects if the client stops for good first. */
  connect(): Promise<ConnectedData>;
  /** Close for good with a close frame (default 1000): no reconnect, the server drops the state. */
  close(code?: number, reason?: string): void;

  /** Resolves with the data of the direct reply; rejects with a YektaError. */
  request<R = any>(event: string, data?: unknown, options?: RequestOptions): Promise<R>;
  /** Fire and forget; false when not connected (nothing was sent). */
  send(event: string, data?: unknown): boolean;

  /** Call `listener` for `event`; returns a function that removes it. */
  on<K extends string>(event: K, listener: Listener<Events, K>): () => void;
  /** Like `on`, for the next occurrence only. */
  once<K extends string>(event: K, listener: Listener<Events, K>): () => void;
  off(event: string, listener?: (...args: any[]) => void): this;
}
