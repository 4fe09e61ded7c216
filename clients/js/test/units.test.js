import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { backoffDelay, compareEventIds, tokenExpiry } from "../src/index.js";
import { EventStream, EventTracker } from "../src/events.js";
import { refreshDelay } from "../src/token.js";
import { event, fakeJwt } from "./support/fake-websocket.js";

describe("backoff", () => {
  test("the ceiling doubles per attempt from initialDelayMs up to maxDelayMs", () => {
    const options = { initialDelayMs: 250, maxDelayMs: 10_000 };
    const ceilings = [1, 2, 3, 4, 5, 6, 7, 8].map((n) => backoffDelay(n, options, () => 0.999999));
    assert.deepEqual(ceilings, [249, 499, 999, 1999, 3999, 7999, 9999, 9999]);
    assert.equal(backoffDelay(1000, options, () => 0.999999), 9999); // no overflow for long outages
  });

  test("full jitter: any delay from 0 up to the ceiling", () => {
    assert.equal(backoffDelay(5, {}, () => 0), 0);
    assert.equal(backoffDelay(5, {}, () => 0.5), 2000);
    for (let i = 0; i < 1000; i += 1) {
      const delay = backoffDelay(3, { initialDelayMs: 100, maxDelayMs: 1000 });
      assert.ok(delay >= 0 && delay < 400, `${delay}`);
    }
  });
});

describe("event ids", () => {
  test("compare numerically as (ms, n), never as strings", () => {
    assert.equal(compareEventIds("10-0", "9-0"), 1);
    assert.equal(compareEventIds("9-10", "9-9"), 1);
    assert.equal(compareEventIds("1767322800000-3", "1767322800000-3"), 0);
    assert.equal(compareEventIds("1767322800000-3", "1767322800001-0"), -1);
    assert.equal(compareEventIds("99999999999999999999-0", "99999999999999999998-5"), 1);
  });

  test("ids not of the form <ms>-<n> are not compared", () => {
    assert.equal(compareEventIds("abc", "1-0"), null);
    assert.equal(compareEventIds("01-0", "1-0"), null);
    assert.equal(compareEventIds(null, "1-0"), null);
  });
});

describe("EventTracker", () => {
  test("drops events at or before the last delivered id, and repeated seqs of a run", () => {
    const tracker = new EventTracker();
    assert.ok(tracker.accept(event("run_a", 1, "100-0")));
    assert.ok(tracker.accept(event("run_a", 2, "100-1")));
    assert.ok(!tracker.accept(event("run_a", 2, "100-1")), "same event again");
    assert.ok(!tracker.accept(event("run_a", 1, "100-0")), "an older event");
    assert.ok(!tracker.accept(event("run_a", 2, "101-0")), "a seq already delivered under another id");
    assert.ok(tracker.accept(event("run_b", 1, "101-1")));
    assert.equal(tracker.lastEventId, "101-1");
  });

  test("a coalesced partial_result is new when its last seq is", () => {
    const tracker = new EventTracker();
    assert.ok(tracker.accept(event("run_a", 1, "1-0")));
    assert.ok(tracker.accept(event("run_a", 5, "1-4", "partial_result", { merged_from: 2 })));
    assert.ok(!tracker.accept(event("run_a", 3, "1-2", "partial_result")));
    assert.ok(tracker.accept(event("run_a", 6, "1-5")));
  });

  test("opaque ids: duplicates are found by id and by seq", () => {
    const tracker = new EventTracker({ lastEventId: "opaque-start" });
    assert.ok(tracker.accept(event("run_a", 1, "x")));
    assert.ok(!tracker.accept(event("run_a", 1, "x")));
    assert.ok(tracker.accept(event("run_a", 2, "y")));
    assert.ok(!tracker.accept(event("run_a", 1, "z")));
  });

  test("starts after a given cursor", () => {
    const tracker = new EventTracker({ lastEventId: "200-0" });
    assert.ok(!tracker.accept(event("run_a", 1, "199-9")));
    assert.ok(tracker.accept(event("run_a", 1, "200-1")));
  });

  test("keeps a bounded history per run", () => {
    const tracker = new EventTracker({ historySize: 3 });
    for (let seq = 1; seq <= 5; seq += 1) tracker.accept(event("run_a", seq, `1-${seq}`));
    assert.deepEqual(tracker.historyFor("run_a").map((e) => e.seq), [3, 4, 5]);
  });
});

describe("EventStream", () => {
  test("yields pushed values in order, then ends after the buffered ones", async () => {
    const stream = new EventStream();
    let cleaned = false;
    stream.onEnd(() => (cleaned = true));
    stream.push(1);
    setTimeout(() => {
      stream.push(2);
      stream.end();
      stream.push(3);
    }, 5);
    const seen = [];
    for await (const value of stream) seen.push(value);
    assert.deepEqual(seen, [1, 2]);
    assert.ok(cleaned);
  });

  test("breaking out of the loop unsubscribes", async () => {
    const stream = new EventStream();
    let cleaned = false;
    stream.onEnd(() => (cleaned = true));
    stream.push("a");
    stream.push("b");
    for await (const value of stream) {
      assert.equal(value, "a");
      break;
    }
    assert.ok(cleaned);
  });
});

describe("tokens", () => {
  test("exp is read from the payload without verifying", () => {
    assert.equal(tokenExpiry(fakeJwt({ sub: "alice", exp: 1767322800 })), 1767322800);
    assert.equal(tokenExpiry(fakeJwt({ sub: "alice" })), null);
    assert.equal(tokenExpiry("not-a-jwt"), null);
    assert.equal(tokenExpiry("a.%%%.c"), null);
  });

  test("refresh a fifth of the remaining lifetime before exp, at most the lead", () => {
    const now = 1_000_000;
    assert.equal(refreshDelay(now / 1000 + 10, now, 30_000), 8_000);
    assert.equal(refreshDelay(now / 1000 + 3600, now, 30_000), 3_570_000);
    assert.equal(refreshDelay(now / 1000 - 5, now, 30_000), 0);
  });
});
