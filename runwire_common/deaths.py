"""The payload of ``agent_death``, whichever service announces the death.

A run's death is announced by the execution service (a replica that drained
or lost a run: ``executor_lost``) or by the registry (no heartbeat:
``no_heartbeat``). Both build the payload here, so a client sees one shape.

``recovery_action`` is one of a small vocabulary a client may act on:

* ``retry`` — the run's work is lost and its thread is free again: starting
  the run again is safe (the only action reported today);
* ``contact_support`` — the run cannot be recovered by the user (reserved).

``recovery_hint`` says the same for a person.
"""

from __future__ import annotations

RETRY = "retry"
CONTACT_SUPPORT = "contact_support"
RECOVERY_ACTIONS = (RETRY, CONTACT_SUPPORT)
RETRY_HINT = "Start the run again; the thread is free."


def death_payload(*, cause: str, message: str) -> dict[str, str]:
    """The ``agent_death`` payload for a run that died of ``cause``, explained by ``message``."""
    return {
        "status": "dead",
        "death_cause": cause,
        "message": message,
        "recovery_action": RETRY,
        "recovery_hint": RETRY_HINT,
    }
