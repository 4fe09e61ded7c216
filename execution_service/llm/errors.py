"""What a failed model request means to the user: an error code and a message without secrets.

The SDK has already retried what is worth retrying (429, 5xx, timeouts,
dropped connections) when an exception reaches this module. Messages name
the endpoint without credentials, query or fragment, never the API key, and
quote nothing the endpoint said except a short, redacted reason for a
rejected request (400/422), where it is the only useful hint.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import openai

from execution_service.redaction import redact_text
from execution_service.sdk import AgentFailure

UNREACHABLE = "llm_unreachable"
AUTH_FAILED = "llm_auth_failed"
MODEL_NOT_FOUND = "llm_model_not_found"
RATE_LIMITED = "llm_rate_limited"
UNAVAILABLE = "llm_unavailable"
TIMEOUT = "llm_timeout"
STREAM_INTERRUPTED = "llm_stream_interrupted"
REQUEST_REJECTED = "llm_request_rejected"
TOO_MANY_STEPS = "llm_max_steps"
MALFORMED_TOOL_CALLS = "llm_malformed_tool_calls"
NO_MODEL = "llm_no_model"
TOOL_NOT_ALLOWED = "llm_tool_not_allowed"

# How much of an endpoint's own reason for rejecting a request is quoted.
MAX_QUOTED_REASON = 200


def safe_endpoint(url: str) -> str:
    """``url`` without user info, query and fragment: fit for a message or a log line."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "the configured endpoint"
    if not parts.scheme or not host:
        return "the configured endpoint"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _endpoint_reason(exc: openai.APIStatusError, secret: str) -> str:
    body = exc.body
    message = ""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            message = error["message"]
        elif isinstance(body.get("message"), str):
            message = body["message"]
    if secret:
        message = message.replace(secret, "[REDACTED]")
    message = redact_text(" ".join(message.split()))
    if len(message) > MAX_QUOTED_REASON:
        message = message[:MAX_QUOTED_REASON] + "…"
    return message


def request_failure(exc: openai.OpenAIError, *, endpoint: str, model: str, api_key: str) -> AgentFailure:
    """The failure of a request that did not start streaming (after the SDK's retries)."""
    where = safe_endpoint(endpoint)
    if isinstance(exc, openai.APITimeoutError):
        return AgentFailure(f"the model endpoint {where} did not answer in time", code=TIMEOUT)
    if isinstance(exc, openai.APIConnectionError):
        return AgentFailure(f"could not connect to the model endpoint {where}", code=UNREACHABLE)
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return AgentFailure(
            f"the model endpoint {where} refused the API key (HTTP {exc.status_code}); check OPENAI_API_KEY",
            code=AUTH_FAILED,
        )
    if isinstance(exc, openai.NotFoundError):
        return AgentFailure(
            f"the model endpoint {where} does not know the model {model!r} (HTTP 404); "
            "check RUNWIRE_LLM_MODEL, the input's model, or OPENAI_BASE_URL",
            code=MODEL_NOT_FOUND,
        )
    if isinstance(exc, openai.RateLimitError):
        return AgentFailure(
            f"the model endpoint {where} is rate limiting requests (HTTP 429); try again later",
            code=RATE_LIMITED,
        )
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code >= 500:
            return AgentFailure(
                f"the model endpoint {where} is unavailable (HTTP {exc.status_code}); try again later",
                code=UNAVAILABLE,
            )
        reason = _endpoint_reason(exc, api_key)
        detail = f": {reason}" if reason else ""
        return AgentFailure(
            f"the model endpoint {where} rejected the request (HTTP {exc.status_code}){detail}",
            code=REQUEST_REJECTED,
        )
    return stream_failure(exc, endpoint=endpoint)


def stream_failure(exc: Exception, *, endpoint: str) -> AgentFailure:
    """The failure of a stream that had started: it was cut, stalled, or reported an error."""
    where = safe_endpoint(endpoint)
    if isinstance(exc, openai.APITimeoutError):
        return AgentFailure(f"the model endpoint {where} stopped sending its answer", code=TIMEOUT)
    if isinstance(exc, openai.APIConnectionError):
        return interrupted(endpoint)
    if isinstance(exc, openai.APIError):
        return AgentFailure(
            f"the model endpoint {where} reported an error in the middle of its answer", code=UNAVAILABLE
        )
    return AgentFailure(f"the model endpoint {where} sent an answer that could not be read", code=UNAVAILABLE)


def interrupted(endpoint: str) -> AgentFailure:
    return AgentFailure(
        f"the answer of the model endpoint {safe_endpoint(endpoint)} was cut off before it ended",
        code=STREAM_INTERRUPTED,
    )
