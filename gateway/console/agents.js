// The agent picker (agents.list) and a sensible default input per agent.

import { el, clear } from "./dom.js";

const SCRIPTED_EXAMPLE = {
  steps: [
    { think: "planning the answer" },
    { tool: "calculator", args: { expression: "6 * 7" } },
    { partial: "6 × 7 = 42. " },
    { ask: "What is your name?" },
    { partial: " — nice to meet you." },
  ],
  result: "done",
};

const DEFAULT_INPUTS = Object.freeze({
  assistant: { message: "what is 12 * (3 + 4)?" },
  llm: { message: "Hello! In one sentence, what can you do?" },
  scripted: SCRIPTED_EXAMPLE,
});

export function defaultInput(agent) {
  return JSON.stringify(DEFAULT_INPUTS[agent] ?? { message: "" }, null, 2);
}

/** Fill the <select> with the agents; keep the user's choice when it still exists. */
export function showAgents(select, description, agents) {
  const previous = select.value;
  clear(select);
  for (const agent of agents) {
    const tools = (agent.tools ?? []).map((t) => t.name).join(", ");
    select.append(
      el("option", {
        text: agent.name,
        attrs: { value: agent.name, title: tools ? `tools: ${tools}` : "no tools" },
        data: { description: agent.description ?? "", tools },
      }),
    );
  }
  const names = agents.map((a) => a.name);
  select.value = names.includes(previous) ? previous : names.includes("assistant") ? "assistant" : names[0] ?? "";
  describe(select, description);
}

export function describe(select, description) {
  const option = select.selectedOptions[0];
  const tools = option?.dataset.tools;
  description.textContent = option ? `${option.dataset.description}${tools ? ` — tools: ${tools}` : ""}` : "";
}

/** The editor's JSON as an object, or a reason it is not one. */
export function parseInput(text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    return { problem: `input is not valid JSON: ${error.message}` };
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    return { problem: "input must be a JSON object, e.g. {\"message\": \"…\"}" };
  }
  return { value };
}
