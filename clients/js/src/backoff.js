/**
 * Exponential backoff with full jitter: the delay before reconnect attempt
 * `attempt` (1, 2, 3 …) is uniform in [0, min(maxDelayMs, initialDelayMs · 2^(attempt-1))).
 * Full jitter spreads the reconnects of many clients after a gateway restart.
 *
 * @param {number} attempt
 * @param {{ initialDelayMs?: number, maxDelayMs?: number }} [options]
 * @param {() => number} [random] a source of numbers in [0, 1)
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, { initialDelayMs = 250, maxDelayMs = 10_000 } = {}, random = Math.random) {
  const exponent = Math.min(Math.max(0, attempt - 1), 30);
  const ceiling = Math.min(maxDelayMs, initialDelayMs * 2 ** exponent);
  return Math.floor(random() * ceiling);
}
