// RunwireClient against a fake WebSocket: the test plays the gateway.
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, test } from "node:test";

import { RunwireClient, RunwireError } from "../src/index.js";
import { FakeWebSocket, event, fakeJwt, tick } from "./support/fake-websocket.js";

const TOKEN = fakeJwt({ sub: "alice", exp: Math.floor(Date.now() / 1000) + 3600 });
const clients = [];

function makeClient(options = {}) {
  const client = new RunwireClient({
    url: "ws://gateway.test/ws",
    token: TOKEN,
    WebSocket: FakeWebSocket,
    reconnect: { initialDelayMs: 20, maxDelayMs: 80 },
    ...options,
  });
  const log = { states: [], events: [], gaps: [], errors: [] };
  client.on("state", (change) => log.states.push(change));
  client.on("event", (e) => log.events.push(e));
  client.on("gap", (gap) => log.gaps.push(gap));
  client.on("error", (err) => log.errors.push(err));
  clients.push(client);
  return { client, log };
}

async function connected(options) {
  const made = makeClient(options);
  const opened = made.client.connect();
  const ws = await FakeWebSocket.nth(0);
  ws.accept();
  await opened;
  return { ...made, ws };
}

beforeEach(() => FakeWebSocket.reset());
afterEach(() => {
  for (const client of clients.splice(0)) client.close();
});

describe("connecting", () => {
  test("offers runwire.v1 and bearer.<jwt>, resolves on the connected frame", async () => {
    const { client, log, ws } = await connected();
    assert.deepEqual(ws.protocols, ["runwire.v1", `bearer.${TOKEN}`]);
    assert.equal(ws.after, null);
    assert.equal(client.userId, "alice");
    assert.equal(client.connectionId, "conn_1");
    assert.equal(client.state, "open");
    assert.deepEqual(
      log.states.map((s) => [s.state, s.resumed]),
      [["connecting", null], ["open", 0]],
    );
  });

  test("getToken supplies the token; a lastEventId resumes at once and opens on `resumed`", async () => {
    const { client, log } = makeClient({ token: undefined, getToken: async () => TOKEN, lastEventId: "50-0" });
    const opened = client.connect();
    const ws = await FakeWebSocket.nth(0);
    assert.equal(ws.after, "50-0");
    assert.deepEqual(ws.protocols, ["runwire.v1", `bearer.${TOKEN}`]);
    ws.accept();
    await opened;
    assert.equal(client.state, "connecting");
    ws.receive(event("run_a", 3, "50-1"));
    ws.receive({ type: "resumed", id: null, replayed: 1 });
    assert.equal(client.state, "open");
    assert.deepEqual(log.states.at(-1), { state: "open", attempt: 0, resumed: 1, code: null, reason: null });
    assert.equal(log.events.length, 1);
  });

  test("without a global WebSocket the constructor says what to pass", () => {
    const saved = globalThis.WebSocket;
    globalThis.WebSocket = undefined;
    try {
      assert.throws(() => new RunwireClient({ url: "ws://x/ws", token: TOKEN }), /pass one/);
    } finally {
      globalThis.WebSocket = saved;
    }
  });
});

describe("requests", () => {
  test("replies are matched by id, whatever their order", async () => {
    const { client, ws } = await connected();
    const run = client.getRun("run_1");
    const runs = client.listRuns({ threadId: "thread_1", limit: 5 });
    const [get, list] = ws.sent;
    assert.deepEqual(get, { type: "run.get", run_id: "run_1", id: get.id });
    assert.deepEqual(list, { type: "runs.list", thread_id: "thread_1", limit: 5, id: list.id });
    assert.notEqual(get.id, list.id);
    ws.receive({ type: "runs", id: list.id, runs: [{ run_id: "run_2" }], next_page_token: "p2" });
    ws.receive({ type: "run", id: get.id, run: { run_id: "run_1", state: "completed" } });
    assert.deepEqual(await run, { run_id: "run_1", state: "completed" });
    assert.deepEqual(await runs, { runs: [{ run_id: "run_2" }], nextPageToken: "p2" });
  });

  test("the frames of every method", async () => {
    const { client, ws } = await connected();
    const calls = [
      [() => client.startRun({ agent: "scripted", input: { steps: [] }, threadId: "t", multitaskStrategy: "enqueue" }),
        { type: "run.start", agent: "scripted", input: { steps: [] }, thread_id: "t", multitask_strategy: "enqueue" },
        { type: "run.accepted", run: { run_id: "r" } }, { run_id: "r" }],
      [() => client.cancelRun("r"), { type: "run.cancel", run_id: "r" }, { type: "run.cancelling", run: { run_id: "r" } }, { run_id: "r" }],
      [() => client.respond("r", "q", { text: "Paris" }), { type: "run.respond", run_id: "r", request_id: "q", response: { text: "Paris" } },
        { type: "run.responded", run: { run_id: "r" } }, { run_id: "r" }],
      [() => client.listThreads({ limit: 2 }), { type: "threads.list", limit: 2 },
        { type: "threads", threads: [], next_page_token: null }, { threads: [], nextPageToken: null }],
      [() => client.getThread("t"), { type: "thread.get", thread_id: "t" },
        { type: "thread", thread: { thread_id: "t" }, messages: [] }, { thread: { thread_id: "t" }, messages: [] }],
      [() => client.deleteThread("t"), { type: "thread.delete", thread_id: "t" }, { type: "thread.deleted", thread_id: "t" }, "t"],
      [() => client.listAgents(), { type: "agents.list" }, { type: "agents", agents: [{ name: "scripted" }] }, [{ name: "scripted" }]],
    ];
    for (const [call, frame, reply, expected] of calls) {
      const pending = call();
      const sent = ws.sent.at(-1);
      assert.deepEqual(sent, { ...frame, id: sent.id });
      ws.receive({ ...reply, id: sent.id });
      assert.deepEqual(await pending, expected);
    }
    const pong = client.ping();
    ws.reply("ping", { type: "pong", server_time: "2026-01-02T03:04:05.123456Z" });
    assert.equal((await pong).serverTime, "2026-01-02T03:04:05.123456Z");
  });

  test("an error frame rejects its request with RunwireError; one without id is an `error` event", async () => {
    const { client, log, ws } = await connected();
    const pending = client.getRun("run_missing");
    ws.reply("run.get", { type: "error", code: "not_found", message: "run not found" });
    await assert.rejects(pending, (err) => err instanceof RunwireError && err.code === "not_found" && err.message === "run not found");
    ws.receive({ type: "error", id: null, code: "unavailable", message: "event stream interrupted; reconnecting" });
    assert.equal(log.errors.length, 1);
    assert.equal(log.errors[0].code, "unavailable");
  });

  test("requests in flight fail with `unavailable` on a disconnect and are not sent again", async () => {
    const { client, ws } = await connected({ random: () => 0 });
    const start = client.startRun({ agent: "scripted", input: {} });
    ws.drop(1006);
    await assert.rejects(start, (err) => err.code === "unavailable");
    const queued = client.getRun("run_1"); // while reconnecting: waits for the next connection
    const next = await FakeWebSocket.nth(1);
    next.accept();
    await tick();
    assert.deepEqual(next.sent.map((f) => f.type), ["run.get"]);
    next.reply("run.get", { type: "run", run: { run_id: "run_1" } });
    assert.deepEqual(await queued, { run_id: "run_1" });
  });

  test("a request without a reply times out; requests after close() are refused", async () => {
    const { client } = await connected({ requestTimeoutMs: 20 });
    await assert.rejects(client.ping(), (err) => err.code === "timeout");
    client.close();
    await assert.rejects(client.ping(), (err) => err.code === "unavailable");
  });
});

describe("events", () => {
  test("a reconnect resumes after the last event; an overlapping replay is delivered once", async () => {
    const { client, log, ws } = await connected({ random: () => 0 });
    ws.receive(event("run_a", 1, "100-0", "agent_started"));
    ws.receive(event("run_a", 2, "100-1"));
    ws.receive(event("run_a", 2, "100-1")); // the same frame twice
    ws.drop(1012, "service restart");
    const next = await FakeWebSocket.nth(1);
    assert.equal(next.after, "100-1");
    next.accept();
    next.receive(event("run_a", 1, "100-0", "agent_started")); // a server replaying too much
    next.receive(event("run_a", 2, "100-1"));
    next.receive(event("run_a", 3, "100-2", "partial_result"));
    next.receive({ type: "resumed", id: null, replayed: 3 });
    next.receive(event("run_a", 4, "101-0", "agent_completed"));
    assert.deepEqual(log.events.map((e) => e.seq), [1, 2, 3, 4]);
    assert.equal(client.lastEventId, "101-0");
    const states = log.states.map((s) => [s.state, s.code, s.resumed]);
    assert.deepEqual(states, [["connecting", null, null], ["open", null, 0], ["reconnecting", 1012, null], ["open", null, 3]]);
  });

  test("before the first event a reconnect resumes from the connection's start", async () => {
    const { ws } = await connected({ random: () => 0 });
    ws.drop(1006);
    const next = await FakeWebSocket.nth(1);
    assert.equal(next.after, `${Date.parse("2026-01-02T03:04:05.123456Z")}-0`);
  });

  test("a gap frame is surfaced", async () => {
    const { log, ws } = await connected();
    const gap = { type: "gap", requested_after: "1-0", oldest_event_id: "5-0" };
    ws.receive(gap);
    assert.deepEqual(log.gaps, [gap]);
  });

  test("events() yields every event once; runEvents() one run's, from its history, up to its terminal event", async () => {
    const { client, ws } = await connected();
    ws.receive(event("run_a", 1, "1-0", "agent_started"));
    const all = client.events();
    const runA = client.runEvents("run_a");
    ws.receive(event("run_b", 1, "1-1", "agent_started"));
    ws.receive(event("run_a", 2, "1-2", "agent_completed"));
    ws.receive(event("run_a", 2, "1-2", "agent_completed"));
    ws.receive(event("run_b", 2, "1-3", "agent_cancelled"));
    const seenA = [];
    for await (const e of runA) seenA.push([e.seq, e.type]);
    assert.deepEqual(seenA, [[1, "agent_started"], [2, "agent_completed"]]);
    const seenAll = [];
    setTimeout(() => client.close(), 5);
    for await (const e of all) seenAll.push(e.event_id);
    assert.deepEqual(seenAll, ["1-1", "1-2", "1-3"]);
    // A finished run's iterator ends at once from the history.
    const again = [];
    for await (const e of client.runEvents("run_a")) again.push(e.seq);
    assert.deepEqual(again, [1, 2]);
  });
});

describe("close codes", () => {
  for (const code of [1006, 1011, 1012, 1013, 1001]) {
    test(`${code} reconnects with backoff`, async () => {
      const { log, ws } = await connected({ random: () => 0.5 });
      ws.drop(code);
      const reconnecting = log.states.at(-1);
      assert.equal(reconnecting.state, "reconnecting");
      assert.equal(reconnecting.code, code);
      assert.equal(reconnecting.attempt, 1);
      assert.equal(reconnecting.delayMs, 10); // half of the 20 ms ceiling
      const second = await FakeWebSocket.nth(1);
      second.drop(1006); // still down: the next delay is longer
      assert.equal(log.states.at(-1).attempt, 2);
      assert.equal(log.states.at(-1).delayMs, 20);
      const third = await FakeWebSocket.nth(2);
      third.accept();
      assert.ok(third.after, "resumes from the connection's start");
      third.receive({ type: "resumed", id: null, replayed: 0 });
      assert.deepEqual(log.states.at(-1), { state: "open", attempt: 0, resumed: 0, code: null, reason: null });
    });
  }

  test("1008 with a static token: closed, an `unauthenticated` error, no retry", async () => {
    const { client, log, ws } = await connected();
    const iterator = client.events();
    const pending = client.ping();
    ws.drop(1008, "token expired");
    await assert.rejects(pending, (err) => err.code === "unavailable");
    assert.equal(client.state, "closed");
    assert.deepEqual(log.states.at(-1), { state: "closed", attempt: 0, resumed: null, code: 1008, reason: "token expired" });
    assert.equal(log.errors.length, 1);
    assert.equal(log.errors[0].code, "unauthenticated");
    assert.deepEqual(await iterator.next(), { value: undefined, done: true });
    await tick(100);
    assert.equal(FakeWebSocket.instances.length, 1);
  });

  test("1008 with getToken: one more try with a fresh token, then stop", async () => {
    let calls = 0;
    const { client, log } = makeClient({
      token: undefined,
      getToken: async () => fakeJwt({ sub: "alice", exp: Math.floor(Date.now() / 1000) + 3600, n: ++calls }),
    });
    const opened = client.connect();
    (await FakeWebSocket.nth(0)).accept();
    await opened;
    FakeWebSocket.instances[0].drop(1008, "token expired");
    const second = await FakeWebSocket.nth(1);
    assert.equal(calls, 2);
    assert.notEqual(second.protocols[1], FakeWebSocket.instances[0].protocols[1]);
    second.drop(1008, "token expired");
    await tick(50);
    assert.equal(FakeWebSocket.instances.length, 2);
    assert.equal(client.state, "closed");
    assert.equal(log.errors.at(-1).code, "unauthenticated");
  });

  test("a handshake refused with 401 is not retried like a network failure", async () => {
    const { client, log } = makeClient();
    const opened = client.connect();
    (await FakeWebSocket.nth(0)).refuse(401);
    await assert.rejects(opened, (err) => err.code === "unauthenticated");
    await tick(50);
    assert.equal(FakeWebSocket.instances.length, 1);
    assert.equal(log.states.at(-1).state, "closed");
  });

  test("an expired token is not even sent", async () => {
    const { client } = makeClient({ token: fakeJwt({ sub: "alice", exp: 1 }) });
    await assert.rejects(client.connect(), (err) => err.code === "unauthenticated");
    assert.equal(FakeWebSocket.instances.length, 0);
    client.setToken(TOKEN);
    const again = client.connect();
    (await FakeWebSocket.nth(0)).accept();
    await again;
    assert.equal(client.state, "open");
  });

  test("close() closes with 1000 and stops", async () => {
    const { client, log, ws } = await connected();
    client.close();
    assert.equal(ws.closedWith.code, 1000);
    await tick(50);
    assert.equal(FakeWebSocket.instances.length, 1);
    assert.equal(client.state, "closed");
    assert.deepEqual(log.states.map((s) => s.state), ["connecting", "open", "closed"]);
  });
});

describe("token refresh", () => {
  test("a fresh token opens a new connection from the cursor before exp; the old one closes after its requests", async () => {
    const soon = () => fakeJwt({ sub: "alice", exp: Date.now() / 1000 + 1 });
    const { client, log } = makeClient({ token: undefined, getToken: async () => soon() });
    const opened = client.connect();
    const first = await FakeWebSocket.nth(0);
    first.accept();
    await opened;
    first.receive(event("run_a", 1, "7-0", "agent_started"));
    const pending = client.getRun("run_a");
    const second = await FakeWebSocket.nth(1, 1500); // refreshed at about 0.8 s
    assert.equal(second.after, "7-0");
    second.accept({ connectionId: "conn_new" });
    assert.equal(client.connectionId, "conn_new");
    first.receive(event("run_a", 2, "7-1"));
    second.receive(event("run_a", 2, "7-1")); // the same event on both: delivered once
    second.receive({ type: "resumed", id: null, replayed: 1 });
    assert.equal(first.closedWith, null, "the old connection still owes a reply");
    first.reply("run.get", { type: "run", run: { run_id: "run_a" } });
    assert.deepEqual(await pending, { run_id: "run_a" });
    await tick(100);
    assert.equal(first.closedWith?.code, 1000);
    await tick(20);
    assert.deepEqual(log.events.map((e) => e.seq), [1, 2]);
    assert.deepEqual(log.states.map((s) => s.state), ["connecting", "open"]);
    const ping = client.ping();
    assert.equal(second.requests("ping").length, 1);
    second.reply("ping", { type: "pong", server_time: null });
    await ping;
  });
});
