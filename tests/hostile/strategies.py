"""Hypothesis strategies for hostile input: JSON values, client frames, protobuf messages."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from runwire.bridge.v1 import bridge_pb2

# -- text -------------------------------------------------------------------

# Every code point, control characters and lone surrogates included (JSON can carry
# those as \uXXXX escapes, so the client must be able to send them).
ANY_CHAR = st.characters(codec=None, exclude_categories=())
# What protobuf strings can hold: valid Unicode, so no surrogates; control characters yes.
UNICODE_CHAR = st.characters(exclude_categories=("Cs",))
CONTROL_CHARS = st.sampled_from(
    ["\x00", "\x01", "\x07", "\t", "\n", "\r", "\x1b", "\x7f", "\u2028", "\ufeff"]
)
PLACEHOLDERS = st.sampled_from(
    ["null", "None", "undefined", "test", "0", "1", "demo_x", "temp_1", "fake_user", "XXX", "default", " "]
)


def _long_text(alphabet: str) -> st.SearchStrategy[str]:
    return st.builds(lambda ch, n: ch * n, st.sampled_from(alphabet), st.integers(257, 20_000))


def hostile_text(*, surrogates: bool) -> st.SearchStrategy[str]:
    """Short arbitrary strings, control characters, placeholders and very long strings."""
    chars = ANY_CHAR if surrogates else UNICODE_CHAR
    return st.one_of(
        st.text(chars, max_size=24),
        st.text(st.one_of(chars, CONTROL_CHARS), max_size=8),
        PLACEHOLDERS,
        _long_text("x\u00e9\U0001f600"),
    )


def plausible_id(prefix: str) -> st.SearchStrategy[str]:
    return st.integers(0, 2**128 - 1).map(lambda n: f"{prefix}_{n:032x}")


# -- JSON ----------------------------------------------------------------------

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),  # beyond 64 bits
    st.sampled_from([2**53 + 1, -(2**63), 2**64]),
    st.integers(4290, 4299).map(lambda digits: 10**digits - 1),  # just under Python's 4,300-digit limit
    st.floats(allow_nan=True, allow_infinity=True),  # NaN/Infinity become non-JSON literals
    hostile_text(surrogates=True),
)


def json_values(
    scalars: st.SearchStrategy[Any] = JSON_SCALARS, *, max_leaves: int = 20
) -> st.SearchStrategy[Any]:
    keys = st.one_of(st.text(ANY_CHAR, max_size=10), st.sampled_from(["type", "id", "input", "args"]))
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=5), st.dictionaries(keys, children, max_size=5)
        ),
        max_leaves=max_leaves,
    )


JSON_VALUES = json_values()


def encode_json(value: Any, *, ascii_only: bool) -> str:
    """``value`` as JSON text; lone surrogates can only travel escaped."""
    if not ascii_only:
        text = json.dumps(value, ensure_ascii=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            pass
        else:
            return text
    return json.dumps(value, ensure_ascii=True)


@st.composite
def json_texts(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> tuple[Any, str]:
    """``(value, text)``: a value and one of its JSON encodings, sometimes deeply nested."""
    value = draw(values)
    text = encode_json(value, ascii_only=draw(st.booleans()))
    return value, text


# -- client frames ---------------------------------------------------------------

FRAME_TYPES = (
    "run.start",
    "run.cancel",
    "run.get",
    "runs.list",
    "resume",
    "ping",
    "heartbeat",
    "start_agent",
    "user_message",
    "chat",
    "chat_message",
    "user_typing",
)
CLIENT_IDS = st.one_of(
    st.none(),
    st.text(ANY_CHAR, max_size=10),
    st.text(min_size=120, max_size=140),
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)
EVENT_IDS = st.from_regex(r"(0|[1-9][0-9]{0,21})-(0|[1-9][0-9]{0,21})", fullmatch=True)
CURSORS = st.one_of(EVENT_IDS, st.text(ANY_CHAR, max_size=20), st.just(""))
PROTO_CURSORS = st.one_of(EVENT_IDS, st.text(UNICODE_CHAR, max_size=20), st.just(""))
SCRIPT_STEPS = st.one_of(
    st.fixed_dictionaries({"think": st.text(max_size=40)}),
    st.fixed_dictionaries({"partial": st.text(max_size=40)}),
    st.fixed_dictionaries({"sleep_ms": st.integers(-10, 50)}),
    st.fixed_dictionaries({"fail": st.text(max_size=20)}),
    st.fixed_dictionaries(
        {"tool": st.sampled_from(["echo", "calculator", "clock", "text_stats", "nope"]), "args": JSON_VALUES}
    ),
    JSON_VALUES,
)
AGENT_INPUTS = st.one_of(
    st.fixed_dictionaries({"steps": st.lists(SCRIPT_STEPS, max_size=4)}, optional={"result": JSON_VALUES}),
    st.fixed_dictionaries({"message": hostile_text(surrogates=True)}),
    JSON_VALUES,
)
FIELD_VALUES: Mapping[str, st.SearchStrategy[Any]] = {
    "agent": st.one_of(
        st.sampled_from(["scripted", "assistant", "SCRIPTED", "nope"]), hostile_text(surrogates=True)
    ),
    "input": AGENT_INPUTS,
    "thread_id": st.one_of(st.none(), plausible_id("thread"), hostile_text(surrogates=True)),
    "run_id": st.one_of(plausible_id("run"), hostile_text(surrogates=True)),
    "multitask_strategy": st.one_of(
        st.sampled_from(["reject", "enqueue", "interrupt", "REJECT"]), JSON_VALUES
    ),
    "state": st.one_of(st.sampled_from(["running", "completed", "dead", "RUNNING"]), JSON_VALUES),
    "limit": st.one_of(st.integers(-5, 205), st.sampled_from([0, 1, 200, 201, 2**63]), JSON_VALUES),
    "page_token": st.one_of(st.none(), hostile_text(surrogates=True)),
    "after": CURSORS,
    "payload": st.one_of(
        st.fixed_dictionaries(
            {"user_request": hostile_text(surrogates=True)}, optional={"thread_id": JSON_VALUES}
        ),
        JSON_VALUES,
    ),
    "content": hostile_text(surrogates=True),
    "text": hostile_text(surrogates=True),
}


@st.composite
def client_frames(draw: st.DrawFn) -> dict[str, Any]:
    """A JSON object shaped like a client frame: a real (or near) type, plausible and hostile fields."""
    kind = draw(
        st.one_of(
            st.sampled_from(FRAME_TYPES), st.sampled_from(["Ping", "run.", "event"]), st.text(max_size=8)
        )
    )
    frame: dict[str, Any] = {"type": kind}
    if draw(st.integers(0, 4)):
        frame["id"] = draw(CLIENT_IDS)
    for name in draw(st.sets(st.sampled_from(sorted(FIELD_VALUES)), max_size=5)):
        frame[name] = draw(st.one_of(FIELD_VALUES[name], JSON_VALUES))
    frame.update(draw(st.dictionaries(st.text(ANY_CHAR, max_size=6), JSON_VALUES, max_size=2)))
    if draw(st.integers(0, 9)) == 0:
        frame["type"] = draw(JSON_VALUES)  # a non-string type
    return frame


# -- protobuf messages -------------------------------------------------------------

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
# String fields whose name says what a well-formed value looks like; generated values mix
# these with hostile text so calls get past validation and reach the domain code.
StringHints = Mapping[str, st.SearchStrategy[str]]
Setter = Callable[[Message], object]


def int_values(low: int, high: int) -> st.SearchStrategy[int]:
    candidates = {low, high, 0, 1, -1, low + 1, high - 1, 2**31 - 1, -(2**31), 2**53}
    edges = sorted(v for v in candidates if low <= v <= high)
    small = st.integers(max(low, -5), min(high, 400))
    return st.one_of(st.sampled_from(edges), st.integers(low, high), small)


def enum_values(enum: EnumDescriptor) -> st.SearchStrategy[int]:
    known = [value.number for value in enum.values]
    return st.one_of(
        st.sampled_from(known), int_values(-(2**31), 2**31 - 1)
    )  # open enums: unknown numbers too


def field_values(field: FieldDescriptor, hints: StringHints, depth: int) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        hostile = hostile_text(surrogates=False)
        hint = hints.get(field.name)
        return st.one_of(hint, hint, hint, hostile) if hint is not None else hostile
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.binary(min_size=32, max_size=32))
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=64 if kind == FieldDescriptor.TYPE_DOUBLE else 32)
    if kind == FieldDescriptor.TYPE_ENUM:
        return enum_values(field.enum_type)
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return messages(field.message_type, hints, depth=depth + 1)
    low, high = _INT_RANGES[kind]
    return int_values(low, high)


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _field_setter(field: FieldDescriptor, hints: StringHints, depth: int) -> st.SearchStrategy[Setter]:
    """A strategy for a function that sets ``field`` on a message."""
    if _is_map(field):
        key_field = field.message_type.fields_by_name["key"]
        value_field = field.message_type.fields_by_name["value"]
        entries = st.dictionaries(
            field_values(key_field, hints, depth), field_values(value_field, hints, depth), max_size=3
        )
        return entries.map(lambda e: lambda m: getattr(m, field.name).update(e))
    if field.is_repeated:
        items = st.lists(field_values(field, hints, depth), max_size=3)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            return items.map(lambda xs: lambda m: [getattr(m, field.name).add().CopyFrom(x) for x in xs])
        return items.map(lambda xs: lambda m: getattr(m, field.name).extend(xs))
    value = field_values(field, hints, depth)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return value.map(lambda v: lambda m: getattr(m, field.name).CopyFrom(v))
    return value.map(lambda v: lambda m: setattr(m, field.name, v))


def messages(
    descriptor: Descriptor, hints: StringHints | None = None, *, depth: int = 0
) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor`` with any subset of fields set to edge and hostile values.

    The field strategies are built once, here, so drawing stays cheap.
    """
    cls = message_factory.GetMessageClass(descriptor)
    if depth > 3:
        return st.builds(cls)
    setters = [st.one_of(st.none(), _field_setter(f, hints or {}, depth)) for f in descriptor.fields]

    def build(chosen: tuple[Setter | None, ...]) -> Message:
        message = cls()
        for setter in chosen:
            if setter is not None:
                setter(message)
        return message

    return st.tuples(*setters).map(build)


# -- the bridge's streams ------------------------------------------------------------

# Mostly a handful of ids, so adds, removes and credits of one sequence meet each other
# (duplicates, removes of live and of ended subscriptions); sometimes any other uint64
# except the largest, which the stream tests keep for their witness.
STREAM_IDS = st.one_of(st.integers(1, 4), st.integers(1, 4), int_values(0, 2**64 - 2))


def fabric_requests(hints: StringHints) -> st.SearchStrategy[Message]:
    """``FabricRequest`` messages with any field values whose subscription ids mostly collide."""

    def fix(request: Message, ids: list[int]) -> Message:
        assert isinstance(request, bridge_pb2.FabricRequest)
        if request.HasField("add"):
            request.add.subscription_id = ids[0]
        if request.HasField("remove"):
            request.remove.subscription_id = ids[1]
        for credit, subscription_id in zip(request.credits, ids[2:], strict=False):
            credit.subscription_id = subscription_id
        return request

    generated = messages(bridge_pb2.FabricRequest.DESCRIPTOR, hints)
    return st.builds(fix, generated, st.lists(STREAM_IDS, min_size=5, max_size=5))


def publish_stream_requests(hints: StringHints) -> st.SearchStrategy[Message]:
    """``PublishStreamRequest`` messages with any field values whose batch ids mostly collide."""

    def fix(request: Message, batch_id: int) -> Message:
        assert isinstance(request, bridge_pb2.PublishStreamRequest)
        request.batch_id = batch_id
        return request

    generated = messages(bridge_pb2.PublishStreamRequest.DESCRIPTOR, hints)
    return st.builds(fix, generated, STREAM_IDS)


def carried(message: Message) -> list[Message]:
    """The requests one message of an answered stream carries, each answered on its own.

    The ``bundle`` contract of ``PublishStreamRequest`` and ``WriteRunsRequest``,
    written out independently of :mod:`runwire_common.bundles`: the message
    itself unless it sets nothing but its bundle, then what each message of
    its bundle carries, in order.
    """
    inner: list[Message] = getattr(message, "bundle")  # noqa: B009 - every caller's type has one
    if not inner:
        return [message]
    rest = type(message)()
    rest.CopyFrom(message)
    rest.ClearField("bundle")
    itself = [message] if rest.ByteSize() else []
    return itself + [item for bundled in inner for item in carried(bundled)]
