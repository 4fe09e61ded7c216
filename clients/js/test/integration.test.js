// RunwireClient against the real services, started by tests/clients/test_js_client.py, which passes:
//   RUNWIRE_JS_GATEWAY_URL   ws://127.0.0.1:PORT/ws
//   RUNWIRE_JS_JWT_SECRET    the gateway's HS256 secret (tokens are minted here, per test)
//   RUNWIRE_JS_CONTROL_URL   http://127.0.0.1:PORT — POST /gateway/kill or /gateway/terminate
//                            stops the gateway (SIGKILL / SIGTERM) and answers once it is back
//   RUNWIRE_JS_LOG_CAPACITY  the bridge's retained events per user (small, for the gap test)
// Without them every test here is skipped.
import assert from "node:assert/strict";
import { createHmac, randomBytes } from "node:crypto";
import { describe, test } from "node:test";

import WebSocket from "ws";

import { RunwireClient, RunwireError, isTerminal } from "../src/index.js";

const URL_ = process.env.RUNWIRE_JS_GATEWAY_URL;
const SECRET = process.env.RUNWIRE_JS_JWT_SECRET;
const CONTROL = process.env.RUNWIRE_JS_CONTROL_URL;
const LOG_CAPACITY = Number(process.env.RUNWIRE_JS_LOG_CAPACITY || 0);
const skip = URL_ && SECRET && CONTROL && LOG_CAPACITY ? false : "no services: run tests/clients/test_js_client.py";

const newUser = () => `user_${randomBytes(16).toString("hex")}`;

function mint(user, ttlS = 600) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const unsigned = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub: user, iat: now, exp: now + ttlS })}`;
  return `${unsigned}.${createHmac("sha256", SECRET).update(unsigned).digest("base64url")}`;
}

const clients = [];

/** A client with a log of what it emitted. */
function open(user, options = {}) {
  const client = new RunwireClient({
    url: URL_,
    token: options.getToken ? undefined : mint(user),
    WebSocket,
    reconnect: { initialDelayMs: 100, maxDelayMs: 800 },
    ...options,
  });
  const log = { states: [], events: [], gaps: [], errors: [] };
  client.on("state", (change) => log.states.push(change));
  client.on("event", (event) => log.events.push(event));
  client.on("gap", (gap) => log.gaps.push(gap));
  client.on("error", (err) => log.errors.push(err));
  clients.push(client);
  return { client, log };
}

async function until(condition, what, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function collect(iterator) {
  const events = [];
  for await (const event of iterator) events.push(event);
  return events;
}

/** The guarantees for one run: seq 1..n (a coalesced frame covers merged_from..seq), each once, one terminal event, last. */
function assertCleanRun(events) {
  let next = 1;
  for (const event of events) {
    assert.equal(event.merged_from ?? event.seq, next, `seqs ${events.map((e) => e.seq)}`);
    next = event.seq + 1;
  }
  assert.equal(new Set(events.map((e) => e.event_id)).size, events.length, "an event_id delivered twice");
  assert.deepEqual(events.map(isTerminal), events.map((_, i) => i === events.length - 1));
  return events.at(-1);
}

const partialCount = (events) =>
  events.filter((e) => e.type === "partial_result").reduce((n, e) => n + e.seq - (e.merged_from ?? e.seq) + 1, 0);

function streamingScript(chunks, pauseMs) {
  const steps = [];
  for (let i = 0; i < chunks; i += 1) {
    steps.push({ partial: `chunk-${i} ` });
    if (pauseMs) steps.push({ sleep_ms: pauseMs });
  }
  return { steps, result: "all chunks" };
}

async function restartGateway(how) {
  const response = await fetch(`${CONTROL}/gateway/${how}`, { method: "POST" });
  assert.equal(response.status, 200, await response.text());
}

// Each test skips itself (a skipped suite would not show in the summary's `# skipped`).
const it = (name, fn) => test(name, { skip }, fn);

describe("against the services", { concurrency: 1 }, () => {
  test.afterEach(() => {
    for (const client of clients.splice(0)) client.close();
  });

  it("a run: requests answer, its events arrive once each in seq order", async () => {
    const { client, log } = open(newUser());
    await client.connect();
    assert.match(client.connectionId, /^conn_/);
    const all = client.events();
    const run = await client.startRun({
      agent: "scripted",
      input: {
        steps: [{ think: "planning" }, { tool: "calculator", args: { expression: "6 * 7" } }, { partial: "Hel" }, { partial: "lo" }],
        result: "Hello",
      },
    });
    assert.equal(run.agent, "scripted");
    const events = await collect(client.runEvents(run.run_id));
    const terminal = assertCleanRun(events);
    assert.equal(terminal.type, "agent_completed");
    assert.equal(terminal.payload.final_response, "Hello");
    assert.deepEqual(
      events.map((e) => e.type),
      ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "partial_result", "partial_result", "agent_completed"],
    );
    assert.deepEqual(log.events, events);
    assert.equal(client.lastEventId, terminal.event_id);

    assert.equal((await client.getRun(run.run_id)).state, "completed");
    const { runs, nextPageToken } = await client.listRuns({ threadId: run.thread_id, limit: 10 });
    assert.deepEqual(runs.map((r) => r.run_id), [run.run_id]);
    assert.equal(nextPageToken, null);
    const { threads } = await client.listThreads({ limit: 10 });
    assert.deepEqual(threads.map((t) => t.thread_id), [run.thread_id]);
    const { thread, messages } = await client.getThread(run.thread_id);
    assert.equal(thread.thread_id, run.thread_id);
    assert.deepEqual(messages, []); // a scripted run adds no messages
    const agents = await client.listAgents();
    assert.ok(agents.some((agent) => agent.name === "scripted"), JSON.stringify(agents));
    assert.ok((await client.ping()).serverTime);
    assert.equal(await client.deleteThread(run.thread_id), run.thread_id);
    await assert.rejects(client.getRun(run.run_id), (err) => err.code === "not_found");

    client.close();
    const streamed = await collect(all); // ends on close()
    assert.deepEqual(streamed, events);
  });

  it("input_required is answered with respond(); cancelRun ends a run", async () => {
    const { client } = open(newUser());
    await client.connect();
    const run = await client.startRun({ agent: "scripted", input: { steps: [{ ask: "capital of France?" }], result: "done" } });
    const events = [];
    for await (const event of client.runEvents(run.run_id)) {
      events.push(event);
      if (event.type === "input_required") {
        const { request_id: requestId } = event.payload;
        assert.equal((await client.getRun(run.run_id)).pending_input.request_id, requestId);
        await assert.rejects(client.respond(run.run_id, requestId, { nope: 1 }), (err) => err.code === "invalid_argument");
        assert.equal((await client.respond(run.run_id, requestId, { text: "Paris" })).run_id, run.run_id);
        await assert.rejects(client.respond(run.run_id, requestId, { text: "Lyon" }), (err) => err.code === "failed_precondition");
      }
    }
    assert.equal(assertCleanRun(events).type, "agent_completed");
    assert.ok(events.some((e) => e.type === "partial_result" && e.payload.content.includes("Paris")));

    const long = await client.startRun({ agent: "scripted", input: { steps: [{ sleep_ms: 60_000 }], result: "never" } });
    const cancelled = client.runEvents(long.run_id);
    await client.cancelRun(long.run_id);
    const ended = assertCleanRun(await collect(cancelled));
    assert.equal(ended.type, "agent_cancelled");
  });

  it("errors reject with RunwireError codes and leave the connection open", async () => {
    const { client, log } = open(newUser());
    await client.connect();
    const refused = async (promise, code) =>
      assert.rejects(promise, (err) => err instanceof RunwireError && err.code === code && Boolean(err.message));
    await refused(client.getRun(`run_${randomBytes(16).toString("hex")}`), "not_found");
    await refused(client.startRun({ agent: "no_such_agent", input: {} }), "not_found");
    await refused(client.startRun({ agent: "scripted", input: "not an object" }), "invalid_argument");
    await refused(client.startRun({ agent: "scripted", input: { steps: [{ bogus: 1 }] } }), "invalid_argument");
    await refused(client.listRuns({ limit: 0 }), "invalid_argument");
    await refused(client.getThread(`thread_${randomBytes(16).toString("hex")}`), "not_found");
    assert.ok((await client.ping()).rttMs >= 0);
    assert.equal(client.state, "open");
    assert.deepEqual(log.errors, []);
    assert.deepEqual(log.states.map((s) => s.state), ["connecting", "open"]);
  });

  for (const [how, closeCode] of [["kill", 1006], ["terminate", 1012]]) {
    it(`the gateway ${how === "kill" ? "killed" : "terminated"} mid-run: the client resumes, every event once, in seq order`, async () => {
      const { client, log } = open(newUser());
      await client.connect();
      const run = await client.startRun({ agent: "scripted", input: streamingScript(12, 200) });
      const events = [];
      const done = (async () => {
        for await (const event of client.runEvents(run.run_id)) events.push(event);
      })();
      await until(() => events.length >= 3, "the run's first events");
      const before = events.length;
      await restartGateway(how); // answers once the gateway is serving again
      await done;
      assert.equal(assertCleanRun(events).type, "agent_completed");
      assert.equal(partialCount(events), 12);
      assert.ok(events.length > before);
      assert.deepEqual(log.events, events);
      const reconnecting = log.states.filter((s) => s.state === "reconnecting");
      assert.ok(reconnecting.length >= 1);
      assert.equal(reconnecting[0].code, closeCode);
      const reopened = log.states.filter((s) => s.state === "open").at(-1);
      assert.ok(log.states.indexOf(reopened) > log.states.indexOf(reconnecting[0]), JSON.stringify(log.states));
      assert.ok(reopened.resumed >= 0);
      assert.equal(client.state, "open");
      assert.equal((await client.getRun(run.run_id)).state, "completed");
    });
  }

  it("resuming from a cursor older than the retained log surfaces a gap", async () => {
    const user = newUser();
    const first = open(user);
    await first.client.connect();
    const run = await first.client.startRun({ agent: "scripted", input: streamingScript(LOG_CAPACITY + 5, 0) });
    const events = await collect(first.client.runEvents(run.run_id));
    assert.equal(assertCleanRun(events).type, "agent_completed");
    first.client.close();

    const cursor = events[0].event_id;
    const { client, log } = open(user, { lastEventId: cursor });
    await client.connect();
    await until(() => client.state === "open", "the resumed connection");
    assert.equal(log.gaps.length, 1);
    assert.equal(log.gaps[0].requested_after, cursor);
    assert.ok(log.gaps[0].oldest_event_id);
    const replayed = log.events;
    assert.equal(replayed.length, LOG_CAPACITY);
    assert.deepEqual(replayed.map((e) => e.event_id), events.slice(-LOG_CAPACITY).map((e) => e.event_id));
    assert.equal(log.states.at(-1).resumed, LOG_CAPACITY);
    assert.equal(client.lastEventId, events.at(-1).event_id);
  });

  it("a token that expires closes the connection with 1008, which is not retried", async () => {
    const user = newUser();
    const { client, log } = open(user, { token: mint(user, 3) });
    await client.connect();
    await until(() => client.state === "closed", "the 1008 close", 6_000);
    assert.deepEqual(log.states.at(-1), { state: "closed", attempt: 0, resumed: null, code: 1008, reason: "token expired" });
    assert.equal(log.errors.at(-1).code, "unauthenticated");
    await new Promise((resolve) => setTimeout(resolve, 700));
    assert.deepEqual(log.states.map((s) => s.state), ["connecting", "open", "closed"]);
    await assert.rejects(client.ping(), (err) => err.code === "unavailable");
  });

  it("with getToken a short-lived token is replaced before it expires, without losing the session", async () => {
    const user = newUser();
    let minted = 0;
    const { client, log } = open(user, { getToken: async () => (minted += 1, mint(user, 3)) });
    await client.connect();
    const firstConnection = client.connectionId;
    const run = await client.startRun({ agent: "scripted", input: streamingScript(10, 400) });
    const events = await collect(client.runEvents(run.run_id));
    assert.equal(assertCleanRun(events).type, "agent_completed");
    assert.equal(partialCount(events), 10);
    assert.ok(minted >= 2, `getToken called ${minted} times`);
    assert.notEqual(client.connectionId, firstConnection);
    assert.deepEqual(log.states.map((s) => s.state), ["connecting", "open"]);
    assert.deepEqual(log.errors, []);
  });
});
