"""The registry's tables, as SQLAlchemy 2 typed models.

``runs`` holds one row per run; ``run_owners`` holds one row per user that
ever created a run and exists only to be locked: ``CreateRun`` locks the
caller's row before it counts live runs, which serialises admissions of one
user across every replica (see :mod:`registry_service.admission`).
``input_requests`` holds what runs asked their owners and the answers
(:mod:`registry_service.inputs`); ``thread_messages`` the conversation of each
thread (:mod:`registry_service.threads`). A thread has no row of its own: it
is the owner's runs with one ``thread_id`` and their messages.

Timestamps are stored in UTC. SQLite has no time-zone type, so
:class:`UTCDateTime` normalises on the way in and re-attaches UTC on the way
out; both databases then hand back aware datetimes that compare and sort
alike.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from registry_service.convert import KIND_NAMES, ROLE_NAMES
from registry_service.states import ALL_STATES, MULTITASK_STRATEGIES

ID_LENGTH = 256
CREATE_KEY_LENGTH = 64
AGENT_LENGTH = 128
STATE_LENGTH = 16
ERROR_CODE_LENGTH = 64
KIND_LENGTH = 16
TOOL_NAME_LENGTH = 128
EVENT_TYPE_LENGTH = 32

# Stored by name, like states: InputKind and MessageRole without their prefixes.
INPUT_KINDS = tuple(KIND_NAMES.values())
MESSAGE_ROLES = tuple(ROLE_NAMES.values())


class UTCDateTime(TypeDecorator[datetime]):
    """A time-zone aware ``DateTime`` that always comes back in UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in_list(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class RunRecord(Base):
    """One agent execution; see ``runwire.common.v1.Run`` for the meaning of each field."""

    __tablename__ = "runs"

    run_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    tenant_id: Mapped[str] = mapped_column(String(ID_LENGTH), default="")
    thread_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    agent: Mapped[str] = mapped_column(String(AGENT_LENGTH))
    state: Mapped[str] = mapped_column(String(STATE_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    error_code: Mapped[str | None] = mapped_column(String(ERROR_CODE_LENGTH))
    error_message: Mapped[str | None] = mapped_column(Text())
    result_json: Mapped[str | None] = mapped_column(Text())
    input_json: Mapped[str] = mapped_column(Text())
    version: Mapped[int] = mapped_column(BigInteger(), default=1)
    executor_id: Mapped[str] = mapped_column(String(ID_LENGTH), default="")
    cancel_requested: Mapped[bool] = mapped_column(Boolean(), default=False)
    multitask_strategy: Mapped[str] = mapped_column(String(STATE_LENGTH))
    timeout_seconds: Mapped[int] = mapped_column(Integer(), default=0)
    # The agent_death outbox (see registry_service.death): the sweeper sets
    # ``death_notice_pending`` in the same UPDATE that marks the run dead; it is
    # cleared, with ``death_notified_at`` set, once the bridge took the notice.
    death_notice_pending: Mapped[bool] = mapped_column(Boolean(), default=False, server_default=false())
    death_notice_claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    death_notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The same outbox holds run-end notices (registry_service.death): a terminal TransitionRun
    # that carries the caller's terminal event stores it here and sets ``death_notice_pending``
    # in the same UPDATE; the sweeper delivers it once it is older than the end-notice delay.
    # NULL ``end_event_type``: an ``agent_death`` notice, built by the registry itself.
    end_event_type: Mapped[str | None] = mapped_column(String(EVENT_TYPE_LENGTH))
    end_payload_json: Mapped[str | None] = mapped_column(Text())
    # Set by CreateRun: true for a run queued (``enqueue``) behind a live run of its thread,
    # false for any other run. Only a queued run's ``pending → starting`` takes the owner lock
    # and checks the thread (see registry_service.runs); NULL (a row written before migration
    # 0003, or by an older replica) is treated as queued.
    queued: Mapped[bool | None] = mapped_column(Boolean(), nullable=True)
    # CreateRun's optional create_key: a second CreateRun of the owner with the same key answers
    # with this run instead of creating another (a caller whose answer was lost sends it again).
    create_key: Mapped[str | None] = mapped_column(String(CREATE_KEY_LENGTH), nullable=True)

    __table_args__ = (
        CheckConstraint(_in_list("state", ALL_STATES), name="state"),
        CheckConstraint(_in_list("multitask_strategy", MULTITASK_STRATEGIES), name="multitask_strategy"),
        # Admission counts a user's live runs; listing pages through them newest first.
        Index("ix_runs_user_id_state", "user_id", "state"),
        Index("ix_runs_user_id_created_at_run_id", "user_id", "created_at", "run_id"),
        Index("ix_runs_user_id_thread_id_state", "user_id", "thread_id", "state"),
        # The death sweep looks for live runs across users, and for notices still owed.
        Index("ix_runs_state_updated_at", "state", "updated_at"),
        Index("ix_runs_death_notice_pending", "death_notice_pending", "death_notice_claimed_at"),
        # One run per owner and create_key (NULL keys are all distinct).
        Index("ux_runs_owner_create_key", "tenant_id", "user_id", "create_key", unique=True),
    )


RUNS: Table = RunRecord.__table__  # type: ignore[assignment]


class RunOwner(Base):
    """A lock row per user: ``SELECT … FOR UPDATE`` on it serialises that user's admissions."""

    __tablename__ = "run_owners"

    user_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


OWNERS: Table = RunOwner.__table__  # type: ignore[assignment]


class InputRequestRecord(Base):
    """One question a run asked its owner (``runwire.common.v1.InputRequest``), and its answer.

    ``run_version`` is the run's version right after it moved to ``waiting``
    for this request: while the run is still at that version and waiting,
    this is its pending request, and ``AnswerInput`` resumes it only then.
    """

    __tablename__ = "input_requests"

    run_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    kind: Mapped[str] = mapped_column(String(KIND_LENGTH))
    prompt: Mapped[str] = mapped_column(Text())
    schema_json: Mapped[str] = mapped_column(Text())
    tool_name: Mapped[str] = mapped_column(String(TOOL_NAME_LENGTH))
    call_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    parameters_json: Mapped[str] = mapped_column(Text())
    run_version: Mapped[int] = mapped_column(BigInteger())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    response_json: Mapped[str | None] = mapped_column(Text())
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (CheckConstraint(_in_list("kind", INPUT_KINDS), name="kind"),)


INPUT_REQUESTS: Table = InputRequestRecord.__table__  # type: ignore[assignment]


class ThreadMessageRecord(Base):
    """One message of a thread (``runwire.common.v1.ThreadMessage``); ``id`` orders a thread's messages."""

    __tablename__ = "thread_messages"

    # SQLite only autoincrements an INTEGER PRIMARY KEY (the rowid); PostgreSQL gets a BIGINT serial.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    user_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    tenant_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    thread_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    run_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    role: Mapped[str] = mapped_column(String(KIND_LENGTH))
    content: Mapped[str] = mapped_column(Text())
    tool_calls_json: Mapped[str] = mapped_column(Text())
    tool_call_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    name: Mapped[str] = mapped_column(String(TOOL_NAME_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint(_in_list("role", MESSAGE_ROLES), name="role"),
        # A thread's messages in order (GetThread, titles); a run's (idempotent appends).
        Index("ix_thread_messages_user_id_thread_id_id", "user_id", "thread_id", "id"),
        Index("ix_thread_messages_run_id", "run_id"),
    )


THREAD_MESSAGES: Table = ThreadMessageRecord.__table__  # type: ignore[assignment]
