// Types of @runwire/client (hand-written; checked by `npm run typecheck`).

/** Any WebSocket constructor with the browser API: globalThis.WebSocket, or `ws` in Node. */
export interface WebSocketLike {
  readonly readyState: number;
  // The client assigns these: (event) with `data` for messages, `code`/`reason` for close.
  onopen: any;
  onmessage: any;
  onerror: any;
  onclose: any;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ReconnectOptions {
  /** Ceiling of the first reconnect delay (ms); doubles per attempt. Default 250. */
  initialDelayMs?: number;
  /** Upper bound of the delay ceiling (ms). Default 10000. */
  maxDelayMs?: number;
}

export interface RunwireClientOptions {
  /** `ws://host:port/ws` (`wss://…` behind TLS); in a browser also relative, e.g. `/ws`. */
  url: string;
  /** A JWT. Either this or `getToken`. */
  token?: string;
  /** Returns a JWT; called on each (re)connect and before the current token's `exp`. */
  getToken?: () => string | Promise<string>;
  /** WebSocket constructor; default `globalThis.WebSocket` (Node 20: pass `WebSocket` from `ws`). */
  WebSocket?: WebSocketConstructor;
  reconnect?: ReconnectOptions;
  /** Resume after this event id at the first connect (events after it are replayed). */
  lastEventId?: string | null;
  /** Requests without a reply after this long reject with code `timeout` (0: never). Default 30000. */
  requestTimeoutMs?: number;
  /** A connection without a `connected` frame after this long is dropped and retried. Default 10000. */
  connectTimeoutMs?: number;
  /** With `getToken`: fetch a new token at most this long before `exp`. Default 30000. */
  refreshLeadMs?: number;
  /** Delivered events kept for `runEvents` backlogs and duplicate checks. Default 1000. */
  historySize?: number;
  /** Random source in [0, 1) for the backoff jitter (tests). Default Math.random. */
  random?: () => number;
}

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

export interface StateChange {
  state: ConnectionState;
  /** Reconnect attempt (1, 2, …) while "reconnecting"; 0 once open. */
  attempt: number;
  /** On "open": events the server replayed on this connection (0 without a cursor); else null. */
  resumed: number | null;
  /** Close code of the connection that ended (1006: abnormal), null if none. */
  code: number | null;
  reason: string | null;
  /** On "reconnecting": the delay before the next attempt (ms). */
  delayMs?: number;
}

export type EventType =
  | "agent_started"
  | "agent_thinking"
  | "tool_executing"
  | "tool_completed"
  | "input_required"
  | "partial_result"
  | "agent_completed"
  | "agent_error"
  | "agent_cancelled"
  | "agent_death";

export interface RunwireEvent {
  type: EventType | (string & {});
  event_id: string;
  seq: number;
  /** On a coalesced partial_result: the first seq it stands for (it covers merged_from..seq). */
  merged_from?: number;
  run_id: string;
  thread_id: string;
  user_id: string;
  agent: string;
  timestamp: string;
  payload: Record<string, any>;
}

export interface GapFrame {
  type: "gap";
  requested_after: string;
  oldest_event_id: string | null;
  id?: string | number | null;
}

export type RunState =
  | "pending"
  | "starting"
  | "running"
  | "waiting"
  | "completing"
  | "completed"
  | "failed"
  | "timeout"
  | "cancelled"
  | "dead";

export interface PendingInput {
  request_id: string;
  kind: "input" | "approval";
  prompt: string;
  schema?: Record<string, any>;
  expires_at?: string;
  tool_name?: string;
  call_id?: string;
  parameters?: Record<string, any>;
}

export interface Run {
  run_id: string;
  thread_id: string;
  agent: string;
  state: RunState;
  created_at: string;
  updated_at: string;
  started_at: string | null;
  finished_at: string | null;
  error: { code: string; message: string } | null;
  result: any;
  input: Record<string, any>;
  cancel_requested: boolean;
  pending_input: PendingInput | null;
  [key: string]: any;
}

export interface Thread {
  thread_id: string;
  created_at: string;
  updated_at: string;
  last_run_state: RunState | "" | null;
  title: string;
  [key: string]: any;
}

export interface Message {
  role: "user" | "assistant" | "tool" | (string & {});
  content: string;
  run_id?: string;
  created_at?: string;
  tool_calls?: Array<{ id: string; type: string; function: { name: string; arguments: string } }>;
  tool_call_id?: string;
  name?: string;
  [key: string]: any;
}

export interface Agent {
  name: string;
  description: string;
  tools: any[];
  [key: string]: any;
}

export interface StartRunOptions {
  agent: string;
  input: Record<string, any>;
  threadId?: string;
  multitaskStrategy?: "reject" | "enqueue" | "interrupt";
}

export interface ListRunsOptions {
  threadId?: string;
  state?: RunState;
  limit?: number;
  pageToken?: string | null;
}

export interface ListThreadsOptions {
  limit?: number;
  pageToken?: string | null;
}

export interface ClientEvents {
  state: StateChange;
  event: RunwireEvent;
  gap: GapFrame;
  error: RunwireError;
}

export class RunwireError extends Error {
  constructor(code: string, message: string, details?: { id?: string | number | null; frame?: object; cause?: unknown });
  /** A protocol error code (`not_found`, `invalid_argument`, …) or the client's own:
   *  `unavailable` (no connection carried the request), `timeout`, `unauthenticated`. */
  readonly code: string;
  /** The request's correlation id, when the error answers a request. */
  readonly id: string | number | null;
  /** The server's error frame, when there was one. */
  readonly frame: object | null;
  static fromFrame(frame: { code?: string; message?: string; id?: string | number | null }): RunwireError;
}

export class RunwireClient {
  constructor(options: RunwireClientOptions);
  readonly state: ConnectionState;
  readonly lastEventId: string | null;
  userId: string | null;
  connectionId: string | null;

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof ClientEvents>(type: K, listener: (value: ClientEvents[K]) => void): () => void;
  off<K extends keyof ClientEvents>(type: K, listener: (value: ClientEvents[K]) => void): void;

  /** Resolves on the `connected` frame; rejects if the session ends first (e.g. a refused token). */
  connect(): Promise<void>;
  /** Close with 1000; no reconnect; iterators end; pending requests reject with `unavailable`. */
  close(): void;
  /** Replace the static token, e.g. before connect() again after a 1008 close. */
  setToken(token: string): void;

  /** Send any request frame (an `id` is added); resolves with the reply frame. */
  request(frame: { type: string; [key: string]: any }): Promise<Record<string, any>>;
  startRun(options: StartRunOptions): Promise<Run>;
  cancelRun(runId: string): Promise<Run>;
  getRun(runId: string): Promise<Run>;
  listRuns(options?: ListRunsOptions): Promise<{ runs: Run[]; nextPageToken: string | null }>;
  respond(runId: string, requestId: string, response: Record<string, any>): Promise<Run>;
  listThreads(options?: ListThreadsOptions): Promise<{ threads: Thread[]; nextPageToken: string | null }>;
  getThread(threadId: string): Promise<{ thread: Thread; messages: Message[] }>;
  /** Resolves with the deleted thread's id. */
  deleteThread(threadId: string): Promise<string>;
  listAgents(): Promise<Agent[]>;
  ping(): Promise<{ serverTime: string | null; rttMs: number }>;

  /** Every event from now on, each once, in order; ends when the client closes. */
  events(): AsyncIterableIterator<RunwireEvent>;
  /** One run's events (recent history first), ending after its terminal event. */
  runEvents(runId: string): AsyncIterableIterator<RunwireEvent>;
}

/** Full-jitter backoff delay (ms) before reconnect attempt `attempt` (1, 2, …). */
export function backoffDelay(attempt: number, options?: ReconnectOptions, random?: () => number): number;
/** Compare two `"<ms>-<n>"` event ids; null when either is not of that form. */
export function compareEventIds(a: string | null | undefined, b: string | null | undefined): -1 | 0 | 1 | null;
export function isTerminal(event: { type?: string } | null | undefined): boolean;
export const TERMINAL_TYPES: readonly ["agent_completed", "agent_error", "agent_cancelled", "agent_death"];
/** The `exp` claim (seconds) of a JWT, unverified; null if unreadable. */
export function tokenExpiry(token: string): number | null;
