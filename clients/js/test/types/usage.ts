// Compiled (never run) by `npm run typecheck`: the declarations describe the documented API.
import { RunwireClient, RunwireError, backoffDelay, isTerminal, type RunwireEvent, type Run } from "../../src/index.js";

export async function usage(token: string): Promise<void> {
  const client = new RunwireClient({
    url: "ws://127.0.0.1:8080/ws",
    getToken: async () => token,
    WebSocket: globalThis.WebSocket,
    reconnect: { initialDelayMs: 250, maxDelayMs: 10_000 },
    lastEventId: null,
  });
  const off = client.on("state", ({ state, attempt, resumed, code, reason }) => {
    const s: "connecting" | "open" | "reconnecting" | "closed" = state;
    void [s, attempt, resumed ?? 0, code ?? 0, reason ?? ""];
  });
  off();
  client.on("event", (event: RunwireEvent) => void event.seq);
  client.on("gap", (gap) => void gap.oldest_event_id);
  client.on("error", (err) => {
    if (err instanceof RunwireError) void err.code;
  });
  await client.connect();
  const id: string | null = client.userId ?? client.connectionId ?? client.lastEventId;
  void id;
  const run: Run = await client.startRun({ agent: "scripted", input: { steps: [] }, multitaskStrategy: "reject" });
  await client.cancelRun(run.run_id);
  const { runs, nextPageToken } = await client.listRuns({ threadId: run.thread_id, state: "completed", limit: 10 });
  void [runs[0]?.state, nextPageToken];
  await client.respond(run.run_id, "input_1", { text: "Paris" });
  const { threads } = await client.listThreads({ limit: 5, pageToken: null });
  const { messages } = await client.getThread(threads[0].thread_id);
  void messages[0]?.role;
  const deleted: string = await client.deleteThread(run.thread_id);
  void deleted;
  const agents = await client.listAgents();
  void agents.map((agent) => agent.name + agent.description);
  const { rttMs } = await client.ping();
  void rttMs;
  for await (const event of client.runEvents(run.run_id)) if (isTerminal(event)) break;
  for await (const event of client.events()) void event.payload;
  void backoffDelay(1);
  client.close();
}
