/**
 * The `exp` claim of a JWT (seconds since the epoch), read without verifying
 * the signature (the gateway verifies it), or null when it cannot be read.
 *
 * @param {string} token
 * @returns {number | null}
 */
export function tokenExpiry(token) {
  const parts = typeof token === "string" ? token.split(".") : [];
  if (parts.length !== 3) return null;
  try {
    const base64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const binary = atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4));
    const bytes = Uint8Array.from(binary, (ch) => ch.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return typeof claims?.exp === "number" && Number.isFinite(claims.exp) ? claims.exp : null;
  } catch {
    return null;
  }
}

/** Has the token's `exp` passed (false when it has none we can read)? */
export function tokenExpired(token, nowMs = Date.now()) {
  const exp = tokenExpiry(token);
  return exp !== null && exp * 1000 <= nowMs;
}

/**
 * How long to wait before fetching a fresh token for a connection made with a
 * token expiring at `exp`: a fifth of the remaining lifetime before it, at
 * most `leadMs`, so a short-lived token is refreshed well before the gateway
 * closes the connection (1008) at `exp`.
 *
 * @param {number} exp seconds since the epoch
 * @param {number} nowMs
 * @param {number} leadMs
 */
export function refreshDelay(exp, nowMs, leadMs = 30_000) {
  const remaining = exp * 1000 - nowMs;
  return Math.max(0, remaining - Math.min(leadMs, remaining / 5));
}
