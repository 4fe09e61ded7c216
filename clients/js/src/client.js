/** The Runwire WebSocket client: one logical session over a succession of connections. */

import { backoffDelay } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { RunwireError } from "./errors.js";
import { EventStream, EventTracker, isTerminal } from "./events.js";
import { Requests } from "./requests.js";
import { refreshDelay, tokenExpired, tokenExpiry } from "./token.js";

const SUBPROTOCOL = "runwire.v1";
const CLOSE_NORMAL = 1000;
const CLOSE_POLICY = 1008; // auth expired or refused: never retried with the same token
const HANDOVER_DRAIN_MS = 5_000; // how long a replaced connection may finish its requests
const REFRESH_RETRY_MS = 5_000;

/** Reply frame → what the request's promise resolves with. */
const pickRun = (frame) => frame.run;

export class RunwireClient {
  /** @param {import("./index.js").RunwireClientOptions} options */
  constructor(options = {}) {
    const { url, token, getToken, lastEventId } = options;
    if (typeof url !== "string" || !url) throw new TypeError("RunwireClient: 'url' is required");
    if (typeof token !== "string" && typeof getToken !== "function") {
      throw new TypeError("RunwireClient: pass 'token' (a JWT) or 'getToken' (async () => JWT)");
    }
    const WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WebSocketImpl !== "function") {
      throw new TypeError("RunwireClient: no global WebSocket; pass one, e.g. { WebSocket } from the 'ws' package");
    }
    this._url = url;
    this._token = typeof token === "string" ? token : null;
    this._getToken = typeof getToken === "function" ? getToken : null;
    this._WebSocket = WebSocketImpl;
    this._reconnect = { initialDelayMs: 250, maxDelayMs: 10_000, ...options.reconnect };
    this._connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
    this._refreshLeadMs = options.refreshLeadMs ?? 30_000;
    this._random = options.random ?? Math.random;

    this._emitter = new Emitter();
    this._tracker = new EventTracker({ lastEventId: lastEventId ?? null, historySize: options.historySize ?? 1000 });
    this._requests = new Requests({ timeoutMs: options.requestTimeoutMs ?? 30_000 });

    this._state = "closed";
    this._ended = false; // closed for good (close(), refused auth) until connect() again
    this._generation = 0; // bumped by connect()/close(): late callbacks of an older session do nothing
    this._conn = null; // the connection requests go to
    this._handover = null; // a connection opened with a refreshed token, not yet connected
    this._attempt = 0;
    this._authRetried = false;
    this._timer = null;
    this._refreshTimer = null;
    this._startCursor = null; // resume point before the first event: the first `connected` time
    this._waiters = []; // connect() promises

    /** @type {string | null} */ this.userId = null;
    /** @type {string | null} */ this.connectionId = null;
  }

  get state() {
    return this._state;
  }

  get lastEventId() {
    return this._tracker.lastEventId;
  }

  on(type, listener) {
    return this._emitter.on(type, listener);
  }

  off(type, listener) {
    this._emitter.off(type, listener);
  }

  /** Replace the static token (e.g. after a 1008 close); used from the next connection on. */
  setToken(token) {
    this._token = token;
  }

  // -- lifecycle -------------------------------------------------------------

  /** Open the session; resolves on the `connected` frame, rejects when it ends for good. */
  connect() {
    if (this._state === "open" && this._conn?.connected) return Promise.resolve();
    const waiter = deferred();
    this._waiters.push(waiter);
    if (this._state === "closed") {
      this._ended = false;
      this._generation += 1;
      this._attempt = 0;
      this._authRetried = false;
      this._setState("connecting", { attempt: 0 });
      void this._dial();
    }
    return waiter.promise;
  }

  /** Close the connection with 1000 and stop: no reconnect; iterators end; pending requests fail. */
  close() {
    if (this._state === "closed" && this._ended) return;
    this._generation += 1;
    for (const conn of [this._conn, this._handover]) {
      if (conn) closeQuietly(conn.ws, CLOSE_NORMAL, "client closed");
    }
    this._conn = null;
    this._handover = null;
    this._finish({ code: CLOSE_NORMAL, reason: "client closed" }, new RunwireError("unavailable", "the client was closed"));
  }

  async _dial() {
    const generation = this._generation;
    this._timer = null;
    let token;
    try {
      token = await this._currentToken();
    } catch (err) {
      if (generation !== this._generation) return;
      this._emitError(new RunwireError("unauthenticated", `getToken failed: ${err?.message ?? err}`, { cause: err }));
      this._retry(null, "getToken failed");
      return;
    }
    if (generation !== this._generation) return;
    if (tokenExpired(token)) {
      this._authFailed(null, "token expired");
      return;
    }
    this._conn = this._open(token, false);
  }

  async _currentToken() {
    const token = this._getToken ? await this._getToken() : this._token;
    if (typeof token !== "string" || !token) throw new TypeError("no token");
    return token;
  }

  _open(token, handover) {
    const cursor = this._tracker.lastEventId ?? this._startCursor;
    const url = wsUrl(this._url);
    if (cursor) url.searchParams.set("after", cursor);
    const ws = new this._WebSocket(url.toString(), [SUBPROTOCOL, `bearer.${token}`]);
    const conn = { ws, token, cursor, handover, connected: false, authRefused: false, timer: null };
    conn.timer = setTimeout(() => closeQuietly(ws, 4000, "connect timeout"), this._connectTimeoutMs);
    ws.onmessage = (event) => this._onMessage(conn, event.data);
    ws.onerror = (event) => {
      // Node's `ws` reports a refused handshake as "Unexpected server response: 401";
      // browsers say nothing, there the token's own `exp` is checked before dialing.
      const message = String(event?.message ?? event?.error?.message ?? "");
      if (/response: 401\b/.test(message)) conn.authRefused = true;
    };
    ws.onclose = (event) => this._onClose(conn, event?.code ?? 1006, event?.reason ?? "");
    return conn;
  }

  _onClose(conn, code, reason) {
    clearTimeout(conn.timer);
    const why = `connection closed (${code}${reason ? `: ${reason}` : ""})`;
    this._requests.failConnection(conn, new RunwireError("unavailable", why));
    if (conn === this._handover) {
      // The connection with the refreshed token failed; the current one carries on.
      this._handover = null;
      this._scheduleRefresh(REFRESH_RETRY_MS);
      return;
    }
    if (conn !== this._conn) return; // retired after a token refresh, or from an older session
    this._conn = null;
    clearTimeout(this._refreshTimer);
    if (this._handover) {
      closeQuietly(this._handover.ws, CLOSE_NORMAL, "superseded");
      this._handover = null;
    }
    if (code === CLOSE_POLICY || conn.authRefused) this._authFailed(code, reason || "token refused");
    else this._retry(code, reason);
  }

  _retry(code, reason) {
    this._attempt += 1;
    const delayMs = backoffDelay(this._attempt, this._reconnect, this._random);
    this._setState("reconnecting", { attempt: this._attempt, code, reason, delayMs });
    this._timer = setTimeout(() => void this._dial(), delayMs);
  }

  /** 1008 or a refused handshake: one more try with a fresh token from getToken, else stop. */
  _authFailed(code, reason) {
    if (this._getToken && !this._authRetried) {
      this._authRetried = true;
      this._setState("reconnecting", { attempt: this._attempt, code, reason, delayMs: 0 });
      this._timer = setTimeout(() => void this._dial(), 0);
      return;
    }
    const error = new RunwireError("unauthenticated", `${reason || "authentication failed"}: a new token is needed`);
    this._emitError(error);
    this._finish({ code, reason }, error);
  }

  /** The session is over: fail what waits, end the iterators, state "closed". */
  _finish({ code = null, reason = null }, error) {
    this._ended = true;
    clearTimeout(this._timer);
    clearTimeout(this._refreshTimer);
    this._timer = this._refreshTimer = null;
    this._requests.failAll(error);
    for (const waiter of this._waiters.splice(0)) waiter.reject(error);
    this._setState("closed", { code, reason });
    this._emitter.emit("end");
  }

  _setState(state, { attempt = this._attempt, resumed = null, code = null, reason = null, delayMs = null } = {}) {
    this._state = state;
    const change = { state, attempt, resumed, code, reason };
    if (delayMs !== null) change.delayMs = delayMs;
    this._emitter.emit("state", change);
  }

  _emitError(error) {
    this._emitter.emit("error", error);
  }

  // -- frames ----------------------------------------------------------------

  _onMessage(conn, data) {
    if (typeof data !== "string") {
      if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) data = new TextDecoder().decode(data);
      else return;
    }
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      this._emitError(new RunwireError("invalid_message", "the server sent a frame that is not JSON"));
      return;
    }
    if (frame === null || typeof frame !== "object") return;
    if (frame.type === "connected") return this._onConnected(conn, frame);
    if (frame.type === "resumed" && frame.id == null) return this._onResumed(conn, frame);
    if (frame.type === "gap") return this._emitter.emit("gap", frame);
    if (frame.id != null && this._requests.settle(frame)) return;
    if (frame.type === "error") return this._emitError(RunwireError.fromFrame(frame));
    if (typeof frame.event_id === "string" && typeof frame.run_id === "string") return this._onEvent(frame);
    // Anything else (a reply to a request that timed out, heartbeat_ack …) is of no use.
  }

  _onConnected(conn, frame) {
    conn.connected = true;
    clearTimeout(conn.timer);
    this.userId = frame.user_id ?? this.userId;
    if (this._startCursor === null && this._tracker.lastEventId === null) {
      // Until an event arrives, a reconnect resumes from this connection's start, so the
      // events of a run started now are not lost if the connection drops before them.
      const ms = Date.parse(frame.server_time);
      if (Number.isFinite(ms)) this._startCursor = `${ms}-0`;
    }
    if (conn.handover) {
      if (conn !== this._handover) return; // abandoned: the session moved on meanwhile
      const old = this._conn;
      this._handover = null;
      this._conn = conn;
      this.connectionId = frame.connection_id ?? null;
      this._requests.flush(conn, send);
      if (old) this._retire(old);
      this._scheduleRefresh();
      return;
    }
    if (conn !== this._conn) return;
    this.connectionId = frame.connection_id ?? null;
    this._authRetried = false;
    this._scheduleRefresh();
    this._requests.flush(conn, send);
    for (const waiter of this._waiters.splice(0)) waiter.resolve();
    // With a cursor the server replays first and then says `resumed`; the session is open then.
    if (!conn.cursor) this._opened(0);
  }

  _onResumed(conn, frame) {
    if (conn === this._conn && this._state !== "open") this._opened(Number(frame.replayed) || 0);
  }

  _opened(resumed) {
    this._attempt = 0;
    this._setState("open", { attempt: 0, resumed });
  }

  _onEvent(frame) {
    if (this._tracker.accept(frame)) this._emitter.emit("event", frame);
  }

  // -- token refresh -----------------------------------------------------------

  /** With getToken, reconnect with a fresh token before this one's `exp` (seamlessly). */
  _scheduleRefresh(delayMs) {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (!this._getToken || !this._conn) return;
    const exp = tokenExpiry(this._conn.token);
    if (exp === null) return;
    const due = refreshDelay(exp, Date.now(), this._refreshLeadMs);
    this._refreshTimer = setTimeout(() => void this._refresh(), Math.min(delayMs ?? due, due));
  }

  async _refresh() {
    const generation = this._generation;
    const current = this._conn;
    if (!current?.connected || this._handover) return;
    let token;
    try {
      token = await this._currentToken();
    } catch (err) {
      if (generation === this._generation && current === this._conn) {
        this._emitError(new RunwireError("unauthenticated", `getToken failed: ${err?.message ?? err}`, { cause: err }));
        this._scheduleRefresh(REFRESH_RETRY_MS);
      }
      return;
    }
    if (generation !== this._generation || current !== this._conn) return;
    if (tokenExpired(token)) {
      this._scheduleRefresh(REFRESH_RETRY_MS);
      return;
    }
    // Open the new connection first, with the cursor: events it replays that the old
    // one also delivers are dropped as duplicates, so the switch loses and repeats nothing.
    this._handover = this._open(token, true);
  }

  /** Close a replaced connection once its requests are answered (or after a grace period). */
  _retire(conn) {
    const deadline = Date.now() + HANDOVER_DRAIN_MS;
    const check = () => {
      if (this._requests.inFlight(conn) === 0 || Date.now() >= deadline) closeQuietly(conn.ws, CLOSE_NORMAL, "token refreshed");
      else setTimeout(check, 50);
    };
    check();
  }

  // -- requests ----------------------------------------------------------------

  /**
   * Send a request frame; resolves with the reply frame. While (re)connecting
   * the request waits and is sent once connected; it is never sent twice.
   */
  request(frame) {
    if (this._state === "closed") {
      return Promise.reject(new RunwireError("unavailable", "not connected: call connect() first"));
    }
    const reply = this._requests.add(frame);
    if (this._conn?.connected) this._requests.flush(this._conn, send);
    return reply;
  }

  async startRun({ agent, input, threadId, multitaskStrategy } = {}) {
    return pickRun(
      await this.request(compact({ type: "run.start", agent, input, thread_id: threadId, multitask_strategy: multitaskStrategy })),
    );
  }

  async cancelRun(runId) {
    return pickRun(await this.request({ type: "run.cancel", run_id: runId }));
  }

  async getRun(runId) {
    return pickRun(await this.request({ type: "run.get", run_id: runId }));
  }

  async listRuns({ threadId, state, limit, pageToken } = {}) {
    const reply = await this.request(
      compact({ type: "runs.list", thread_id: threadId, state, limit, page_token: pageToken }),
    );
    return { runs: reply.runs ?? [], nextPageToken: reply.next_page_token ?? null };
  }

  async respond(runId, requestId, response) {
    return pickRun(await this.request({ type: "run.respond", run_id: runId, request_id: requestId, response }));
  }

  async listThreads({ limit, pageToken } = {}) {
    const reply = await this.request(compact({ type: "threads.list", limit, page_token: pageToken }));
    return { threads: reply.threads ?? [], nextPageToken: reply.next_page_token ?? null };
  }

  async getThread(threadId) {
    const reply = await this.request({ type: "thread.get", thread_id: threadId });
    return { thread: reply.thread, messages: reply.messages ?? [] };
  }

  async deleteThread(threadId) {
    const reply = await this.request({ type: "thread.delete", thread_id: threadId });
    return reply.thread_id ?? threadId;
  }

  async listAgents() {
    return (await this.request({ type: "agents.list" })).agents ?? [];
  }

  async ping() {
    const sent = Date.now();
    const reply = await this.request({ type: "ping" });
    return { serverTime: reply.server_time ?? null, rttMs: Date.now() - sent };
  }

  // -- event iterators ------------------------------------------------------------

  /** Every event from now on, in order, each once; ends when the client closes. */
  events() {
    return this._stream(() => true, []);
  }

  /**
   * One run's events — those still in the recent history first, then live
   * ones; ends after the run's terminal event (or when the client closes).
   */
  runEvents(runId) {
    return this._stream((event) => event.run_id === runId, this._tracker.historyFor(runId), true);
  }

  _stream(accept, backlog, untilTerminal = false) {
    const stream = new EventStream();
    for (const event of backlog) {
      stream.push(event);
      if (untilTerminal && isTerminal(event)) {
        stream.end();
        return stream;
      }
    }
    if (this._ended) {
      stream.end();
      return stream;
    }
    const offEvent = this._emitter.on("event", (event) => {
      if (!accept(event)) return;
      stream.push(event);
      if (untilTerminal && isTerminal(event)) stream.end();
    });
    const offEnd = this._emitter.on("end", () => stream.end());
    stream.onEnd(() => {
      offEvent();
      offEnd();
    });
    return stream;
  }
}

function send(conn, frame) {
  conn.ws.send(JSON.stringify(frame));
}

function closeQuietly(ws, code, reason) {
  try {
    ws.close(code, reason);
  } catch {
    // already closed, or a state where close() throws: nothing more to do
  }
}

/** The endpoint as a URL; relative to the page and http(s) → ws(s) in a browser. */
function wsUrl(url) {
  const parsed = new URL(url, globalThis.location?.href);
  if (parsed.protocol === "http:") parsed.protocol = "ws:";
  else if (parsed.protocol === "https:") parsed.protocol = "wss:";
  return parsed;
}

function compact(frame) {
  return Object.fromEntries(Object.entries(frame).filter(([, value]) => value !== undefined));
}

function deferred() {
  let resolve, reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}
