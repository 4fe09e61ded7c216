// One run's live timeline: streaming text, thinking, tool calls paired with their results,
// questions answered in the page, and the terminal status.

import { el, append, pretty, shortId, shortTime } from "./dom.js";
import { promptCard } from "./prompts.js";

export const TERMINAL_TYPES = new Set(["agent_completed", "agent_error", "agent_cancelled", "agent_death"]);
const LIVE_STATES = new Set(["pending", "starting", "running", "waiting", "completing"]);
const STATE_OF = { agent_completed: "completed", agent_cancelled: "cancelled", agent_death: "dead" };

export class RunView {
  /**
   * @param {object} run  a run object (run.accepted, runs) or what an event tells of its run
   * @param {{ cancel(runId: string): Promise<void>, respond(runId: string, requestId: string, response: object): Promise<void> }} actions
   */
  constructor(run, actions) {
    this.runId = run.run_id;
    this.agent = run.agent ?? "";
    this.actions = actions;
    this.ended = false;
    this.streamed = "";
    this.count = 0;
    this.tools = new Map();
    this.prompts = new Map();
    this.block = null;

    this.state = el("span", { class: "state" });
    this.cancelButton = el("button", {
      class: "cancel",
      text: "Cancel",
      attrs: { type: "button" },
      on: { click: () => this.cancel() },
    });
    this.problem = el("p", { class: "problem", attrs: { hidden: true } });
    this.timeline = el("ol", { class: "timeline" });
    this.ledgerCount = el("span", { text: "0" });
    this.ledger = el("ol", { class: "ledger" });
    this.threadLabel = el("span", { class: "ids" });
    this.node = el(
      "article",
      { class: "run", data: { runId: this.runId } },
      el(
        "header",
        {},
        el("h3", {}, el("span", { class: "agent", text: this.agent || "run" }), " ", this.state),
        el("span", { class: "ids", text: `run ${this.runId}`, attrs: { title: this.runId } }),
        this.threadLabel,
        this.cancelButton,
      ),
      this.problem,
      this.timeline,
      el("details", { class: "raw" }, el("summary", {}, "events received: ", this.ledgerCount), this.ledger),
    );
    this.setRun(run);
  }

  /** Update from a run object (a reply of run.accepted, run.get, runs.list …). */
  setRun(run) {
    if (run.agent && !this.agent) this.agent = run.agent;
    if (run.thread_id) {
      this.threadId = run.thread_id;
      this.threadLabel.textContent = `thread ${shortId(run.thread_id)}`;
      this.threadLabel.title = run.thread_id;
    }
    if (!this.ended && run.state) this.setState(run.state);
    if (!this.ended && run.pending_input && !this.prompts.has(run.pending_input.request_id)) {
      this.addPrompt(run.pending_input);
    }
    if (!this.ended && run.state && !LIVE_STATES.has(run.state)) {
      // Known only from the registry (an older run): show how it ended.
      this.ended = true;
      const text = run.error ? `${run.error.code}: ${run.error.message}` : run.result ? pretty(run.result, 600) : "";
      this.add(el("li", { class: `entry terminal ${run.error ? "error" : ""}` }, el("b", { text: run.state }), " ", text));
      this.cancelButton.hidden = true;
    }
  }

  setState(state) {
    this.state.textContent = state;
    this.node.dataset.state = state;
    this.cancelButton.hidden = !LIVE_STATES.has(state);
  }

  /** Apply one event frame of this run. */
  apply(event) {
    this.count += 1;
    this.ledgerCount.textContent = String(this.count);
    const p = event.payload ?? {};
    const seqText = event.merged_from ? `${event.merged_from}–${event.seq}` : String(event.seq);
    this.ledger.append(
      el("li", {
        text: `${seqText} ${event.type}`,
        data: { seq: event.seq, mergedFrom: event.merged_from, eventId: event.event_id, type: event.type },
      }),
    );
    if (event.agent && !this.agent) this.agent = event.agent;
    if (event.type !== "input_required") this.settlePrompts();
    switch (event.type) {
      case "agent_started":
        this.setState("running");
        this.add(
          el("li", { class: "entry started" }, el("b", { text: "started" }), " ", String(p.message ?? ""), " ",
            el("time", { text: shortTime(event.timestamp) })),
        );
        break;
      case "agent_thinking":
        this.thinking(p);
        break;
      case "partial_result":
        this.text(String(p.content ?? ""));
        break;
      case "tool_executing":
        this.toolStarted(p);
        break;
      case "tool_completed":
        this.toolCompleted(p);
        break;
      case "input_required":
        this.setState("waiting");
        if (!this.prompts.has(p.request_id)) this.addPrompt(p);
        break;
      default:
        if (TERMINAL_TYPES.has(event.type)) this.finish(event.type, p);
        else this.add(el("li", { class: "entry" }, el("b", { text: event.type }), " ", pretty(p, 400)));
    }
  }

  add(node) {
    this.block = null;
    this.timeline.append(node);
    return node;
  }

  thinking(p) {
    const label = p.step ? `${p.step}: ` : "";
    const progress = typeof p.progress === "number" ? ` (${Math.round(p.progress * 100)}%)` : "";
    if (this.block?.kind === "thinking" && this.agent === "llm" && !p.step) {
      this.block.body.textContent += String(p.reasoning ?? ""); // the model's reasoning, delta by delta
      return;
    }
    if (this.block?.kind === "thinking") {
      this.block.body.append(el("div", { text: `${label}${p.reasoning ?? ""}${progress}` }));
      return;
    }
    const body = el("div", { class: "body" }, el("div", { text: `${label}${p.reasoning ?? ""}${progress}` }));
    this.add(el("li", { class: "entry thinking" }, el("b", { text: "thinking" }), body));
    this.block = { kind: "thinking", body };
  }

  text(content) {
    this.streamed += content;
    if (this.block?.kind === "text") {
      this.block.body.textContent += content;
      return;
    }
    const body = el("div", { class: "body answer", text: content });
    this.add(el("li", { class: "entry text" }, body));
    this.block = { kind: "text", body };
  }

  toolStarted(p) {
    const status = el("span", { class: "status", text: "running…" });
    const result = el("pre", { class: "result", attrs: { hidden: true } });
    const row = this.add(
      el(
        "li",
        { class: "entry tool", data: { callId: p.call_id, status: "running" } },
        el("b", { text: `tool ${p.tool_name ?? "?"}` }),
        " ",
        status,
        el("pre", { class: "params", text: pretty(p.parameters ?? {}, 2000) }),
        result,
      ),
    );
    this.tools.set(p.call_id, { row, status, result });
  }

  toolCompleted(p) {
    let tool = this.tools.get(p.call_id);
    if (!tool) {
      this.toolStarted({ tool_name: p.tool_name, call_id: p.call_id, parameters: {} });
      tool = this.tools.get(p.call_id);
    }
    const duration = typeof p.duration_ms === "number" ? ` in ${Math.round(p.duration_ms)} ms` : "";
    tool.status.textContent = `${p.status ?? "done"}${duration}`;
    tool.row.dataset.status = p.status ?? "done";
    tool.result.hidden = false;
    tool.result.textContent = p.status === "success" ? pretty(p.result, 2000) : pretty(p.error ?? p.result ?? "", 2000);
    if (p.status !== "success") tool.result.classList.add("error");
    this.block = null;
  }

  addPrompt(request) {
    const card = promptCard(request, async (response) => {
      await this.actions.respond(this.runId, request.request_id, response);
      if (!this.ended) this.setState("running"); // unless its end arrived before the reply
    });
    this.prompts.set(request.request_id, card);
    this.add(card.node);
  }

  /** The run went on: a question still open here was answered (here or elsewhere). */
  settlePrompts() {
    for (const card of this.prompts.values()) card.settle();
  }

  finish(type, p) {
    this.ended = true;
    const status = p.status ?? STATE_OF[type] ?? "failed";
    this.setState(status);
    this.cancelButton.hidden = true;
    const row = el("li", { class: `entry terminal ${type === "agent_completed" ? "ok" : "error"}` });
    append(row, el("b", { text: status }));
    const duration = typeof p.duration_ms === "number" ? ` after ${Math.round(p.duration_ms)} ms` : "";
    if (type === "agent_completed") {
      append(row, duration);
      const final = String(p.final_response ?? "");
      if (final && final !== this.streamed) append(row, el("div", { class: "body answer final", text: final }));
    } else if (type === "agent_error") {
      append(row, ` ${p.error_code ?? ""}: ${p.error_message ?? ""}`);
    } else if (type === "agent_cancelled") {
      append(row, ` ${p.reason ?? ""}`);
    } else {
      append(row, ` ${p.death_cause ?? ""}: ${p.message ?? ""} ${p.recovery_action ? `(${p.recovery_action})` : ""}`);
    }
    this.add(row);
  }

  async cancel() {
    this.cancelButton.disabled = true;
    try {
      await this.actions.cancel(this.runId);
    } catch (error) {
      this.showProblem(error);
    } finally {
      this.cancelButton.disabled = false;
    }
  }

  showProblem(error) {
    this.problem.hidden = false;
    this.problem.textContent = `${error?.code ?? "error"}: ${error?.message ?? String(error)}`;
  }
}
