"""The run state machine, as data.

States are stored by their lower-case names (``runwire_common.names``).
Legal transitions — every other move, including staying in the same state,
is refused with ``FAILED_PRECONDITION``:

==============  ==============================================  =======================
to              allowed from                                    also sets
==============  ==============================================  =======================
``starting``    ``pending``                                     ``started_at``
``running``     ``starting``, ``waiting``
``waiting``     ``running`` (``RequestInput``; ``AnswerInput``
                takes it back to ``running``)
``completing``  ``running``                                     ``result`` (optional)
``completed``   ``completing``                                  ``result`` (optional),
                                                                ``finished_at``
``failed``      ``pending``, ``starting``, ``running``,         ``error``,
``timeout``     ``completing``, ``waiting`` (any live state)    ``finished_at``
``cancelled``
``dead``
``pending``     — (only ``CreateRun`` makes a pending run)
==============  ==============================================  =======================

``running ⇄ waiting`` belong to the state machine but not to ``TransitionRun``:
a run waits through ``RequestInput`` (which records what it asks) and resumes
through ``AnswerInput`` (which records the answer), so a waiting run always
has exactly one unanswered request and is never resumed without its answer
(see :mod:`registry_service.inputs`). ``TransitionRun`` makes every other move,
including a waiting run's ``failed``, ``timeout``, ``cancelled`` and ``dead``.

``pending → running`` is deliberately not a shortcut: the executor reports
``starting`` (it has picked the run up) before ``running`` (the agent is
executing), so a run stuck between the two is visible. Terminal states
(``completed``, ``failed``, ``timeout``, ``cancelled``, ``dead``) have no way
out. Every transition increments ``version`` and sets ``updated_at``;
reaching a terminal state clears ``cancel_requested``.

Besides the table, ``pending → starting`` has a thread rule: it is refused
with ``ABORTED`` (wait and retry, the run stays ``pending``) while another run
of the same thread is ``starting``, ``running`` or ``completing``, or while an
older ``pending`` run of the thread waits (queued runs start in FIFO order).

``CreateRun`` with ``initial_state`` ``starting`` or ``running`` stores a run
that needs no thread check exactly as ``pending → starting`` (and then
``starting → running``) would leave it, every step counted (see
:mod:`registry_service.admission`).

The registry itself moves runs in two places, with the same columns as a
transition: ``CreateRun`` with the ``interrupt`` strategy moves the thread's
live runs to ``cancelled`` (error code ``interrupted``), and the death
sweeper moves live runs without a sign of life to ``dead`` (error code
``no_heartbeat``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from runwire.common.v1 import run_pb2
from runwire_common import names
from runwire_common.names import LIVE_STATE_NAMES, STATE_NAMES, STRATEGY_NAMES, TERMINAL_STATE_NAMES

PENDING = STATE_NAMES[run_pb2.RUN_STATE_PENDING]
STARTING = STATE_NAMES[run_pb2.RUN_STATE_STARTING]
RUNNING = STATE_NAMES[run_pb2.RUN_STATE_RUNNING]
COMPLETING = STATE_NAMES[run_pb2.RUN_STATE_COMPLETING]
COMPLETED = STATE_NAMES[run_pb2.RUN_STATE_COMPLETED]
FAILED = STATE_NAMES[run_pb2.RUN_STATE_FAILED]
TIMEOUT = STATE_NAMES[run_pb2.RUN_STATE_TIMEOUT]
CANCELLED = STATE_NAMES[run_pb2.RUN_STATE_CANCELLED]
DEAD = STATE_NAMES[run_pb2.RUN_STATE_DEAD]
WAITING = STATE_NAMES[run_pb2.RUN_STATE_WAITING]

LIVE_STATES = LIVE_STATE_NAMES
TERMINAL_STATES = TERMINAL_STATE_NAMES
ALL_STATES = LIVE_STATES + TERMINAL_STATES
FAILURE_STATES = tuple(state for state in TERMINAL_STATES if state != COMPLETED)
RESULT_STATES = (COMPLETING, COMPLETED)

ALLOWED_SOURCES: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        PENDING: frozenset(),
        STARTING: frozenset({PENDING}),
        RUNNING: frozenset({STARTING, WAITING}),
        WAITING: frozenset({RUNNING}),
        COMPLETING: frozenset({RUNNING}),
        COMPLETED: frozenset({COMPLETING}),
        FAILED: frozenset(LIVE_STATES),
        TIMEOUT: frozenset(LIVE_STATES),
        CANCELLED: frozenset(LIVE_STATES),
        DEAD: frozenset(LIVE_STATES),
    }
)

# The moves only RequestInput (running → waiting) and AnswerInput (waiting → running) make.
INPUT_MOVES: Mapping[tuple[str, str], str] = MappingProxyType(
    {(RUNNING, WAITING): "RequestInput", (WAITING, RUNNING): "AnswerInput"}
)
# The sources TransitionRun accepts: ALLOWED_SOURCES without the input moves.
TRANSITION_SOURCES: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        target: frozenset(source for source in sources if (source, target) not in INPUT_MOVES)
        for target, sources in ALLOWED_SOURCES.items()
    }
)

# The error recorded when a run fails without the caller saying why.
DEFAULT_ERRORS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        FAILED: ("failed", "the run failed"),
        TIMEOUT: ("timeout", "the run exceeded its execution timeout"),
        CANCELLED: ("cancelled", "the run was cancelled"),
        DEAD: ("dead", "the run's executor stopped reporting"),
    }
)

# Error codes the registry writes itself.
NO_HEARTBEAT = "no_heartbeat"
INTERRUPTED = "interrupted"
NO_HEARTBEAT_MESSAGE = "the worker running this run stopped responding"
INTERRUPTED_MESSAGE = "the run was interrupted by a newer run started on its thread"

# A pending run may only start while no run of its thread is past pending.
ACTIVE_STATES = (STARTING, RUNNING, COMPLETING, WAITING)

# Strategies are stored by name; the names come from the one map in runwire_common.names.
REJECT = STRATEGY_NAMES[run_pb2.MULTITASK_STRATEGY_REJECT]
ENQUEUE = STRATEGY_NAMES[run_pb2.MULTITASK_STRATEGY_ENQUEUE]
INTERRUPT = STRATEGY_NAMES[run_pb2.MULTITASK_STRATEGY_INTERRUPT]
MULTITASK_STRATEGIES = tuple(names.MULTITASK_STRATEGIES)


def is_legal(source: str, target: str) -> bool:
    return source in ALLOWED_SOURCES.get(target, frozenset())


def is_terminal(state: str) -> bool:
    return state in TERMINAL_STATES
