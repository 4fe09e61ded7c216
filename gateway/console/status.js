// The connection's state (from the client's "state" events) and the error panel.

import { el } from "./dom.js";

const LABELS = {
  connecting: "connecting…",
  open: "connected",
  reconnecting: "reconnecting…",
  closed: "disconnected",
  "signed-out": "signed out",
};

export class ConnectionStatus {
  constructor(root) {
    this.root = root;
    this.label = root.querySelector("#conn-state");
    this.user = root.querySelector("#conn-user");
    this.reconnectsNode = root.querySelector("#conn-reconnects");
    this.resumedNode = root.querySelector("#conn-resumed");
    this.detail = root.querySelector("#conn-detail");
    this.reset();
  }

  reset() {
    this.reconnects = 0;
    this.resumed = 0;
    this.opened = 0;
    this.show("signed-out");
    this.user.textContent = "";
  }

  signedIn(userId) {
    this.user.textContent = userId ? `as ${userId}` : "";
    this.root.dataset.user = userId ?? "";
  }

  /** One "state" event of the client: { state, attempt, resumed, code, reason }. */
  update({ state, attempt, resumed, code, reason }) {
    if (state === "open") {
      this.opened += 1;
      if (this.opened > 1) this.reconnects += 1;
      if (typeof resumed === "number") this.resumed += resumed;
    }
    let detail = "";
    if (state === "reconnecting") detail = `attempt ${attempt ?? "?"}${code ? ` after close ${code}` : ""}${reason ? ` (${reason})` : ""}`;
    else if (state === "open" && this.opened > 1) detail = `resumed ${typeof resumed === "number" ? resumed : 0} event(s)`;
    else if (state === "closed" && code) detail = `close ${code}${reason ? ` (${reason})` : ""}`;
    this.show(state, detail);
  }

  show(state, detail = "") {
    this.root.dataset.state = state;
    this.label.textContent = LABELS[state] ?? state;
    this.detail.textContent = detail;
    this.reconnectsNode.textContent = String(this.reconnects);
    this.resumedNode.textContent = String(this.resumed);
    this.root.dataset.reconnects = String(this.reconnects);
    this.root.dataset.resumed = String(this.resumed);
  }
}

export class ErrorPanel {
  constructor(root) {
    this.root = root;
  }

  /** Show an error (a RunwireError, an Error or a string) with what was being done. */
  show(context, error) {
    const code = error?.code ? `${error.code}: ` : "";
    const message = error?.message ?? String(error);
    const item = el(
      "div",
      { class: "error", data: { code: error?.code ?? "" } },
      el("b", { text: context }),
      " ",
      el("span", { text: `${code}${message}` }),
      " ",
      el("button", { class: "dismiss", text: "×", attrs: { type: "button", "aria-label": "dismiss" }, on: { click: () => item.remove() } }),
    );
    this.root.prepend(item);
    while (this.root.childElementCount > 8) this.root.lastElementChild.remove();
  }

  warn(text) {
    const item = el("div", { class: "warning" }, el("span", { text }), " ", el("button", { class: "dismiss", text: "×", attrs: { type: "button", "aria-label": "dismiss" }, on: { click: () => item.remove() } }));
    this.root.prepend(item);
  }

  clear() {
    this.root.replaceChildren();
  }
}
