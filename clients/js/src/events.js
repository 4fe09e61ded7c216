/** Event bookkeeping: de-duplication, per-run order, a short history, async iterators. */

export const TERMINAL_TYPES = Object.freeze(["agent_completed", "agent_error", "agent_cancelled", "agent_death"]);
const TERMINAL = new Set(TERMINAL_TYPES);

/** Is this event the last of its run? */
export function isTerminal(event) {
  return TERMINAL.has(event?.type);
}

const EVENT_ID = /^(0|[1-9][0-9]{0,19})-(0|[1-9][0-9]{0,19})$/;

/**
 * Compare two event ids (`"<ms>-<n>"`) numerically as (ms, n); null when either
 * is not in that form (ids are opaque to the protocol: then only the per-run
 * `seq` and the recent-id set decide).
 *
 * @returns {-1 | 0 | 1 | null}
 */
export function compareEventIds(a, b) {
  const x = typeof a === "string" ? EVENT_ID.exec(a) : null;
  const y = typeof b === "string" ? EVENT_ID.exec(b) : null;
  if (!x || !y) return null;
  return compareDigits(x[1], y[1]) || compareDigits(x[2], y[2]);
}

function compareDigits(a, b) {
  // Canonical digit strings without leading zeros: the longer is larger.
  if (a.length !== b.length) return a.length < b.length ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Decides which event frames are new. An event is a duplicate when
 * - its `event_id` is not after the last delivered one (ids increase per user), or
 * - its `event_id` was delivered recently (ids that cannot be compared), or
 * - its run already delivered a `seq` at least as high (a coalesced
 *   `partial_result` stands for `merged_from`..`seq`: it is new when `seq` is).
 */
export class EventTracker {
  constructor({ lastEventId = null, historySize = 1000, runCapacity = 2000 } = {}) {
    this.lastEventId = lastEventId;
    this._historySize = historySize;
    this._runCapacity = runCapacity;
    /** @type {Map<string, number>} run_id → highest delivered seq, least recently active first */
    this._runs = new Map();
    /** @type {object[]} the latest delivered events, oldest first */
    this._history = [];
    this._recentIds = new Set();
  }

  /** Record the event and return true when it is new; false for a duplicate. */
  accept(event) {
    const id = event.event_id;
    const order = compareEventIds(id, this.lastEventId);
    if (order !== null && order <= 0) return false;
    if (this._recentIds.has(id)) return false;
    const last = this._runs.get(event.run_id);
    if (typeof event.seq === "number" && last !== undefined && event.seq <= last) return false;

    this.lastEventId = id; // accepted ids only ever increase: the newest is the resume cursor
    if (typeof event.seq === "number") {
      this._runs.delete(event.run_id);
      this._runs.set(event.run_id, Math.max(event.seq, last ?? 0));
      if (this._runs.size > this._runCapacity) this._runs.delete(this._runs.keys().next().value);
    }
    this._history.push(event);
    this._recentIds.add(id);
    if (this._history.length > this._historySize) this._recentIds.delete(this._history.shift().event_id);
    return true;
  }

  /** The retained events of one run, in delivery order. */
  historyFor(runId) {
    return this._history.filter((event) => event.run_id === runId);
  }
}

/**
 * A push-based async iterator: `push` values, `end` it; `for await` reads
 * them in order. Breaking out of the loop (`return`) unsubscribes it.
 */
export class EventStream {
  constructor() {
    this._buffer = [];
    this._waiters = [];
    this._done = false;
    this._cleanup = null;
  }

  /** Set what `end` undoes (remove the listeners feeding this stream). */
  onEnd(cleanup) {
    if (this._done) cleanup();
    else this._cleanup = cleanup;
  }

  push(value) {
    if (this._done) return;
    const waiter = this._waiters.shift();
    if (waiter) waiter({ value, done: false });
    else this._buffer.push(value);
  }

  /** No more values: buffered ones are still read, then the loop ends. */
  end() {
    if (this._done) return;
    this._done = true;
    const cleanup = this._cleanup;
    this._cleanup = null;
    cleanup?.();
    for (const waiter of this._waiters.splice(0)) waiter({ value: undefined, done: true });
  }

  next() {
    if (this._buffer.length) return Promise.resolve({ value: this._buffer.shift(), done: false });
    if (this._done) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => this._waiters.push(resolve));
  }

  return() {
    this._buffer.length = 0;
    this.end();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator]() {
    return this;
  }
}
