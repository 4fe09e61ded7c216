/** A scriptable stand-in for the browser WebSocket API: the test plays the server. */

export class FakeWebSocket {
  /** @type {FakeWebSocket[]} */
  static instances = [];

  static reset() {
    FakeWebSocket.instances = [];
  }

  /** The n-th socket the client opened (0-based), once it has been opened. */
  static async nth(n, timeoutMs = 2000) {
    const deadline = Date.now() + timeoutMs;
    while (FakeWebSocket.instances.length <= n) {
      if (Date.now() > deadline) throw new Error(`socket #${n} was never opened`);
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    return FakeWebSocket.instances[n];
  }

  constructor(url, protocols) {
    this.url = new URL(url);
    this.protocols = protocols;
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    this.onopen = this.onmessage = this.onerror = this.onclose = null;
    FakeWebSocket.instances.push(this);
  }

  get after() {
    return this.url.searchParams.get("after");
  }

  // -- the client's side ---------------------------------------------------

  send(data) {
    if (this.readyState !== 1) throw new Error("InvalidStateError: not open");
    this.sent.push(JSON.parse(data));
  }

  close(code = 1000, reason = "") {
    if (this.readyState >= 2) return;
    this.closedWith = { code, reason };
    this.readyState = 2;
    setTimeout(() => this.drop(this.closedWith.code, reason), 0);
  }

  // -- the server's side ----------------------------------------------------

  accept({ user = "alice", connectionId = `conn_${FakeWebSocket.instances.length}`, serverTime = "2026-01-02T03:04:05.123456Z" } = {}) {
    this.readyState = 1;
    this.onopen?.({});
    this.receive({ type: "connected", connection_id: connectionId, user_id: user, server_time: serverTime });
  }

  receive(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  /** Frames the client sent of this type. */
  requests(type) {
    return this.sent.filter((frame) => frame.type === type);
  }

  /** Reply to the client's latest request of `type` with `fields`. */
  reply(type, fields) {
    const request = this.requests(type).at(-1);
    if (!request) throw new Error(`no ${type} request was sent`);
    this.receive({ id: request.id, ...fields });
    return request;
  }

  drop(code = 1006, reason = "") {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** A refused handshake as Node's `ws` reports it. */
  refuse(status) {
    this.onerror?.({ message: `Unexpected server response: ${status}` });
    this.drop(1006, "");
  }
}

/** An unsigned JWT with these claims (the client reads `exp`, the server would verify). */
export function fakeJwt(claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  return `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}.c2ln`;
}

export function event(runId, seq, eventId, type = "agent_thinking", extra = {}) {
  return {
    type,
    event_id: eventId,
    seq,
    run_id: runId,
    thread_id: "thread_1",
    user_id: "alice",
    agent: "scripted",
    timestamp: "2026-01-02T03:04:05.123456Z",
    payload: {},
    ...extra,
  };
}

export const tick = (ms = 0) => new Promise((resolve) => setTimeout(resolve, ms));
