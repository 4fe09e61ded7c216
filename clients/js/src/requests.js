/** Requests correlated with their replies by `id`. */

import { RunwireError } from "./errors.js";

/**
 * Pending requests. A request is queued (no connection yet) until `flush`
 * sends it on a connection; it settles with the frame that echoes its id, or
 * fails when its connection closes (it is never resent: a `run.start` sent
 * twice could start two runs) or when its timeout passes.
 */
export class Requests {
  constructor({ timeoutMs = 30_000, prefix = "js-" } = {}) {
    this._timeoutMs = timeoutMs;
    this._prefix = prefix;
    this._next = 1;
    /** @type {Map<string, {frame: object, conn: object | null, resolve: Function, reject: Function, timer: any}>} */
    this._pending = new Map();
  }

  get size() {
    return this._pending.size;
  }

  /** Register a request; returns the promise of its reply frame. */
  add(frame) {
    const id = `${this._prefix}${this._next++}`;
    return new Promise((resolve, reject) => {
      // The id leads the frame, so even a reply to a frame refused unparsed (rate limits) carries it.
      const entry = { frame: { id, ...frame }, conn: null, resolve, reject, timer: null };
      if (this._timeoutMs > 0) {
        entry.timer = setTimeout(() => {
          this._pending.delete(id);
          reject(new RunwireError("timeout", `no reply to ${frame.type} within ${this._timeoutMs} ms`, { id }));
        }, this._timeoutMs);
      }
      this._pending.set(id, entry);
    });
  }

  /** Send every queued request on `conn` with `send(conn, frame)`. */
  flush(conn, send) {
    for (const [id, entry] of this._pending) {
      if (entry.conn !== null) continue;
      entry.conn = conn;
      try {
        send(conn, entry.frame);
      } catch (err) {
        this._settle(id, entry, null, new RunwireError("unavailable", `could not send ${entry.frame.type}`, { id, cause: err }));
      }
    }
  }

  /** Settle the request this frame replies to; false when it replies to none. */
  settle(frame) {
    const id = String(frame.id);
    const entry = this._pending.get(id);
    if (!entry || entry.conn === null) return false;
    if (frame.type === "error") this._settle(id, entry, null, RunwireError.fromFrame(frame));
    else this._settle(id, entry, frame, null);
    return true;
  }

  /** How many requests sent on `conn` still wait for their reply. */
  inFlight(conn) {
    let count = 0;
    for (const entry of this._pending.values()) if (entry.conn === conn) count += 1;
    return count;
  }

  /** Fail the requests sent on `conn` (it closed); queued ones keep waiting. */
  failConnection(conn, error) {
    for (const [id, entry] of this._pending) {
      if (entry.conn === conn) this._settle(id, entry, null, withId(error, id));
    }
  }

  /** Fail every request, sent or queued. */
  failAll(error) {
    for (const [id, entry] of this._pending) this._settle(id, entry, null, withId(error, id));
  }

  _settle(id, entry, frame, error) {
    this._pending.delete(id);
    clearTimeout(entry.timer);
    if (error) entry.reject(error);
    else entry.resolve(frame);
  }
}

function withId(error, id) {
  return new RunwireError(error.code, error.message, { id });
}
