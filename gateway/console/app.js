// The Runwire browser console: wires the page to the JS client (served at /client/).

import { $, clear } from "./dom.js";
import { defaultInput, describe, parseInput, showAgents } from "./agents.js";
import { showRuns, showThread, showThreadChoices, showThreads } from "./lists.js";
import { devSignInOffered, devToken, tokenSubject } from "./signin.js";
import { ConnectionStatus, ErrorPanel } from "./status.js";
import { RunView, TERMINAL_TYPES } from "./timeline.js";

const status = new ConnectionStatus($("#connection"));
const errors = new ErrorPanel($("#errors"));
const ui = {
  signin: $("#signin"),
  devForm: $("#dev-form"),
  devUser: $("#dev-user"),
  tokenForm: $("#token-form"),
  tokenInput: $("#token-input"),
  workspace: $("#workspace"),
  signOut: $("#sign-out"),
  agent: $("#agent"),
  agentDescription: $("#agent-description"),
  threadChoice: $("#thread-choice"),
  input: $("#input"),
  inputProblem: $("#input-problem"),
  startForm: $("#start-form"),
  startButton: $("#start-button"),
  runs: $("#runs"),
  threads: $("#threads"),
  threadView: $("#thread-view"),
  refresh: $("#refresh-lists"),
  timelines: $("#timelines"),
};

let lib = null; // the JS client module, loaded once
let client = null;
const views = new Map(); // run_id → RunView
let refreshTimer = null;

async function loadClient() {
  if (!lib) lib = await import("/client/index.js");
  return lib;
}

function viewOf(run) {
  let view = views.get(run.run_id);
  if (!view) {
    view = new RunView(run, {
      cancel: async (runId) => view.setRun(await client.cancelRun(runId)),
      respond: async (runId, requestId, response) => {
        await client.respond(runId, requestId, response);
      },
    });
    views.set(run.run_id, view);
    ui.timelines.prepend(view.node);
  }
  return view;
}

async function signIn({ token, getToken, userHint }) {
  const { RunwireClient } = await loadClient();
  errors.clear();
  const mine = new RunwireClient({
    url: `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`,
    token,
    getToken,
    reconnect: { initialDelayMs: 250, maxDelayMs: 5000 },
  });
  client = mine;
  // A client that was signed out may still report its last moments: ignore it.
  const current = (handler) => (value) => {
    if (client === mine) handler(value);
  };
  mine.on("state", current((change) => {
    status.update(change);
    // "closed" is final (the client reconnects on its own otherwise): e.g. the token was refused.
    if (change.state === "closed" && ui.workspace.hidden === false) {
      signOut(`Disconnected${change.code ? ` (close ${change.code}${change.reason ? `: ${change.reason}` : ""})` : ""}; sign in again.`);
    }
  }));
  mine.on("event", current((event) => onEvent(event)));
  mine.on("gap", current((gap) =>
    errors.warn(
      `Some events are no longer retained and were skipped (after ${gap.requested_after}; the oldest kept is ${gap.oldest_event_id ?? "none"}).`,
    ),
  ));
  mine.on("error", current((error) => errors.show("connection", error)));
  status.signedIn(userHint);
  await client.connect();
  status.signedIn(client.userId ?? userHint);
  ui.signin.hidden = true;
  ui.workspace.hidden = false;
  ui.signOut.hidden = false;
  await Promise.all([loadAgents(), refreshLists()]);
}

function signOut(message) {
  const previous = client;
  client = null;
  if (previous) previous.close();
  views.clear();
  clear(ui.timelines);
  clear(ui.threadView);
  clear(ui.runs);
  clear(ui.threads);
  ui.workspace.hidden = true;
  ui.signin.hidden = false;
  ui.signOut.hidden = true;
  status.reset();
  if (message) errors.warn(message);
}

function onEvent(event) {
  if (!event?.run_id) return;
  const view = viewOf({ run_id: event.run_id, thread_id: event.thread_id, agent: event.agent });
  view.apply(event);
  if (TERMINAL_TYPES.has(event.type) || event.type === "input_required" || event.type === "agent_started") {
    scheduleRefresh();
  }
}

async function loadAgents() {
  try {
    showAgents(ui.agent, ui.agentDescription, await client.listAgents());
    ui.input.value = defaultInput(ui.agent.value);
  } catch (error) {
    errors.show("agents.list", error);
  }
}

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => refreshLists(), 300);
}

async function refreshLists() {
  if (!client) return;
  try {
    const [runs, threads] = await Promise.all([client.listRuns({ limit: 20 }), client.listThreads({ limit: 20 })]);
    showRuns(ui.runs, runs.runs ?? [], openRun);
    showThreads(ui.threads, threads.threads ?? [], openThread);
    showThreadChoices(ui.threadChoice, threads.threads ?? []);
    for (const run of runs.runs ?? []) views.get(run.run_id)?.setRun(run);
  } catch (error) {
    errors.show("runs.list / threads.list", error);
  }
}

async function openRun(run) {
  try {
    const view = viewOf(await client.getRun(run.run_id));
    view.node.scrollIntoView({ block: "nearest" });
  } catch (error) {
    errors.show("run.get", error);
  }
}

async function openThread(thread) {
  try {
    const reply = await client.getThread(thread.thread_id);
    showThread(ui.threadView, reply.thread ?? thread, reply.messages ?? [], {
      continueIn: (t) => {
        ui.threadChoice.value = t.thread_id;
      },
      remove: async (t) => {
        try {
          await client.deleteThread(t.thread_id);
          clear(ui.threadView);
          await refreshLists();
        } catch (error) {
          errors.show("thread.delete", error);
        }
      },
    });
  } catch (error) {
    errors.show("thread.get", error);
  }
}

async function startRun(event) {
  event.preventDefault();
  const parsed = parseInput(ui.input.value);
  ui.inputProblem.hidden = !parsed.problem;
  ui.inputProblem.textContent = parsed.problem ?? "";
  if (parsed.problem) return;
  ui.startButton.disabled = true;
  try {
    const run = await client.startRun({
      agent: ui.agent.value,
      input: parsed.value,
      threadId: ui.threadChoice.value || undefined,
    });
    viewOf(run).setRun(run);
    scheduleRefresh();
  } catch (error) {
    errors.show("run.start", error);
  } finally {
    ui.startButton.disabled = false;
  }
}

async function guarded(context, action) {
  try {
    await action();
  } catch (error) {
    errors.show(context, error);
    if (client) signOut();
  }
}

ui.devForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const user = ui.devUser.value.trim();
  guarded("development sign-in", async () => {
    let minted = await devToken(user);
    await signIn({
      // Called on every (re)connect and before exp: a token with a minute left is kept, so a
      // reconnect while the gateway restarts does not depend on reaching /dev/token.
      getToken: async () => {
        if (minted.expires_at * 1000 - Date.now() < 60_000) minted = await devToken(user);
        return minted.token;
      },
      userHint: minted.user_id,
    });
  });
});

ui.tokenForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const token = ui.tokenInput.value.trim().replace(/^Bearer\s+/i, "");
  ui.tokenInput.value = "";
  guarded("sign-in", () => signIn({ token, userHint: tokenSubject(token) }));
});

ui.signOut.addEventListener("click", () => signOut());
ui.agent.addEventListener("change", () => {
  describe(ui.agent, ui.agentDescription);
  ui.input.value = defaultInput(ui.agent.value);
});
ui.startForm.addEventListener("submit", startRun);
ui.refresh.addEventListener("click", () => refreshLists());

devSignInOffered().then((offered) => {
  ui.devForm.hidden = !offered;
  document.body.dataset.ready = "true";
  if (offered) ui.devUser.focus();
});
loadClient().catch((error) => errors.show("loading the JS client (/client/index.js)", error));
