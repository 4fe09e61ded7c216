// The user's runs (runs.list) and threads (threads.list, thread.get).

import { el, clear, shortId, shortTime } from "./dom.js";

/**
 * @param {HTMLElement} list
 * @param {object[]} runs
 * @param {(run: object) => void} open
 */
export function showRuns(list, runs, open) {
  clear(list);
  if (runs.length === 0) list.append(el("li", { class: "empty", text: "no runs yet" }));
  for (const run of runs) {
    list.append(
      el(
        "li",
        { data: { runId: run.run_id, state: run.state } },
        el(
          "button",
          { class: "link", attrs: { type: "button", title: run.run_id }, on: { click: () => open(run) } },
          el("span", { class: "agent", text: run.agent }),
          " ",
          el("span", { class: "state", text: run.state }),
          " ",
          el("span", { class: "ids", text: shortId(run.run_id) }),
          " ",
          el("time", { text: shortTime(run.created_at) }),
        ),
      ),
    );
  }
}

/**
 * @param {HTMLElement} list
 * @param {object[]} threads
 * @param {(thread: object) => void} open
 */
export function showThreads(list, threads, open) {
  clear(list);
  if (threads.length === 0) list.append(el("li", { class: "empty", text: "no threads yet" }));
  for (const thread of threads) {
    list.append(
      el(
        "li",
        { data: { threadId: thread.thread_id, state: thread.last_run_state ?? "" } },
        el(
          "button",
          { class: "link", attrs: { type: "button", title: thread.thread_id }, on: { click: () => open(thread) } },
          el("span", { class: "title", text: thread.title || shortId(thread.thread_id) }),
          " ",
          el("span", { class: "state", text: thread.last_run_state ?? "" }),
          " ",
          el("time", { text: shortTime(thread.updated_at) }),
        ),
      ),
    );
  }
}

/** One thread's conversation, oldest first. */
export function showThread(view, thread, messages, actions) {
  clear(view);
  view.dataset.threadId = thread.thread_id;
  view.append(
    el(
      "header",
      {},
      el("b", { text: thread.title || thread.thread_id }),
      " ",
      el("button", { text: "Continue this thread", attrs: { type: "button" }, on: { click: () => actions.continueIn(thread) } }),
      " ",
      el("button", { text: "Delete", attrs: { type: "button" }, on: { click: () => actions.remove(thread) } }),
      " ",
      el("button", { text: "Close", attrs: { type: "button" }, on: { click: () => clear(view) } }),
    ),
  );
  const list = el("ol", { class: "messages" });
  for (const message of messages) {
    const calls = message.tool_calls ? ` [tool calls: ${message.tool_calls.map((c) => c.name ?? c.function?.name ?? "?").join(", ")}]` : "";
    list.append(
      el("li", { class: `message ${message.role}` }, el("b", { text: message.name ? `${message.role} (${message.name})` : message.role }), " ", `${message.content}${calls}`),
    );
  }
  if (messages.length === 0) list.append(el("li", { class: "empty", text: "no messages" }));
  view.append(list);
}

/** The thread <select> of the start form: "new thread" plus the user's threads. */
export function showThreadChoices(select, threads) {
  const previous = select.value;
  clear(select);
  select.append(el("option", { text: "new thread", attrs: { value: "" } }));
  for (const thread of threads) {
    select.append(el("option", { text: thread.title || thread.thread_id, attrs: { value: thread.thread_id, title: thread.thread_id } }));
  }
  if ([...select.options].some((o) => o.value === previous)) select.value = previous;
}
