/**
 * Runwire's JavaScript client (browsers and Node 20+; no dependencies).
 *
 *   import { RunwireClient } from "@runwire/client";
 *   const client = new RunwireClient({ url: "ws://127.0.0.1:8080/ws", token });
 *   await client.connect();
 *
 * See README.md for the API and the reconnect semantics.
 */
export { RunwireClient } from "./client.js";
export { RunwireError } from "./errors.js";
export { backoffDelay } from "./backoff.js";
export { compareEventIds, isTerminal, TERMINAL_TYPES } from "./events.js";
export { tokenExpiry } from "./token.js";
