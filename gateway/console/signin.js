// Sign-in: paste a token, or — only when the gateway runs with development secrets — pick a
// user name and get a short-lived development token from POST /dev/token.

const DEV_TOKEN_PATH = "/dev/token";

/** Whether this gateway offers development sign-in (GET /dev/token answers 404 otherwise). */
export async function devSignInOffered() {
  try {
    const response = await fetch(DEV_TOKEN_PATH, { method: "GET", cache: "no-store", credentials: "omit" });
    if (!response.ok) return false;
    const body = await response.json();
    return body?.enabled === true;
  } catch {
    return false;
  }
}

/** A development token for `user`: { token, user_id, expires_at }. */
export async function devToken(user) {
  const response = await fetch(`${DEV_TOKEN_PATH}?user=${encodeURIComponent(user)}`, {
    method: "POST",
    cache: "no-store",
    credentials: "omit",
  });
  let body = null;
  try {
    body = await response.json();
  } catch {
    // a plain-text refusal (404 when development sign-in is off)
  }
  if (!response.ok || typeof body?.token !== "string") {
    const error = new Error(body?.error ?? `development sign-in refused (HTTP ${response.status})`);
    error.code = response.status === 404 ? "not_found" : "invalid_argument";
    throw error;
  }
  return body;
}

/** The `sub` of a JWT, read without verifying it (for display only; the gateway verifies). */
export function tokenSubject(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
    return typeof claims.sub === "string" ? claims.sub : null;
  } catch {
    return null;
  }
}
