// A question of a waiting run (input_required), answered in the page with run.respond.

import { el, pretty } from "./dom.js";

/**
 * @param {object} request  the input_required payload (or a run's pending_input)
 * @param {(response: object) => Promise<void>} answer
 * @returns {{ node: HTMLElement, settle(): void }}
 */
export function promptCard(request, answer) {
  const approval = request.kind === "approval";
  const problem = el("p", { class: "problem", attrs: { hidden: true } });
  const done = el("p", { class: "answered", attrs: { hidden: true } });
  const node = el("li", {
    class: `entry prompt ${approval ? "approval" : "input"}`,
    data: { requestId: request.request_id, answered: "false" },
  });
  let finished = false;

  const settle = (text = "answered") => {
    if (finished) return;
    finished = true;
    node.dataset.answered = "true";
    for (const control of node.querySelectorAll("input, button")) control.disabled = true;
    done.hidden = false;
    done.textContent = text;
  };

  const send = async (response, summary) => {
    problem.hidden = true;
    for (const control of node.querySelectorAll("input, button")) control.disabled = true;
    try {
      await answer(response);
      settle(summary);
    } catch (error) {
      problem.hidden = false;
      problem.textContent = `${error?.code ?? "error"}: ${error?.message ?? String(error)}`;
      if (!finished) for (const control of node.querySelectorAll("input, button")) control.disabled = false;
    }
  };

  node.append(el("b", { text: approval ? "approval needed" : "question" }), " ", el("span", { class: "prompt-text", text: request.prompt ?? "" }));
  if (approval) {
    node.append(el("div", { text: `tool ${request.tool_name ?? "?"}` }), el("pre", { class: "params", text: pretty(request.parameters ?? {}, 2000) }));
    const reason = el("input", { attrs: { type: "text", placeholder: "reason (optional)", maxlength: 500, "aria-label": "reason" } });
    const approve = el("button", {
      class: "approve",
      text: "Approve",
      attrs: { type: "button" },
      on: { click: () => send({ approved: true }, "approved") },
    });
    const deny = el("button", {
      class: "deny",
      text: "Deny",
      attrs: { type: "button" },
      on: {
        click: () => {
          const why = reason.value.trim();
          send(why ? { approved: false, reason: why } : { approved: false }, "denied");
        },
      },
    });
    node.append(el("div", { class: "row" }, approve, deny, reason));
  } else {
    const text = el("input", { class: "answer-text", attrs: { type: "text", maxlength: 4000, "aria-label": "answer" } });
    const form = el(
      "form",
      {
        class: "row",
        on: {
          submit: (e) => {
            e.preventDefault();
            send(answerOf(text.value, request.schema), `answered: ${text.value}`);
          },
        },
      },
      text,
      el("button", { text: "Send", attrs: { type: "submit" } }),
    );
    if (ownSchema(request.schema)) node.append(el("pre", { class: "params", text: `answer schema: ${pretty(request.schema, 800)}` }));
    node.append(form);
  }
  node.append(problem, done);
  return { node, settle: () => settle() };
}

/** `{"text": …}`, or the JSON object typed in when the question has a schema of its own. */
function answerOf(value, schema) {
  if (schema && value.trim().startsWith("{")) {
    try {
      const parsed = JSON.parse(value);
      if (parsed && typeof parsed === "object" && !Array.isArray(parsed)) return parsed;
    } catch {
      // not JSON: sent as text
    }
  }
  return { text: value };
}

/** A schema other than the plain `{"text": string}` answer is worth showing. */
function ownSchema(schema) {
  if (!schema || typeof schema !== "object") return false;
  const keys = Object.keys(schema.properties ?? {});
  return !(keys.length === 1 && keys[0] === "text");
}
