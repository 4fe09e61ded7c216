/**
 * The error of a refused request, of a connection-level `error` frame, or of the
 * client itself (`unavailable` when no connection can carry a request, `timeout`
 * when no reply came in time, `unauthenticated` when the token is refused).
 */
export class RunwireError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{ id?: string | number | null, frame?: object, cause?: unknown }} [details]
   */
  constructor(code, message, details = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "RunwireError";
    this.code = code;
    this.id = details.id ?? null;
    this.frame = details.frame ?? null;
  }

  /** An `{"type":"error","id":…,"code":…,"message":…}` frame as an error. */
  static fromFrame(frame) {
    return new RunwireError(
      typeof frame.code === "string" ? frame.code : "internal",
      typeof frame.message === "string" ? frame.message : "error",
      { id: frame.id ?? null, frame },
    );
  }
}
