"""Several requests or answers of an answered stream in one gRPC message.

On ``PublishStream`` and ``WriteRuns`` every request is answered on its own,
and on grpc.aio every message costs both ends about the same CPU whatever it
carries (a round trip of a small message costs each side ≈0.16 ms on the
benchmark machine, and one carrying ten times as much barely more).
So under load the sender puts what queued up while its previous message was
being written into one message, and the server does the same with its
answers: a message's ``bundle`` field holds messages of its own type, each
handled exactly as if it had been sent alone.

Reading (:func:`unbundled`): a message that sets nothing but ``bundle`` is
only their envelope; one that also sets other fields is an item itself,
taken before its bundle; nested bundles are read the same way, depth first.
Nothing in a message is ever left unread, so every request a sender put in
one is answered.

Both ends opt in with the ``runwire-bundles: 1`` header (:data:`ANNOUNCEMENT`):
a sender bundles requests only once the server's response headers carry it,
and a server bundles answers only when the request headers did. A peer of
either side that predates bundles therefore never receives one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

HEADER = "runwire-bundles"
ANNOUNCEMENT: tuple[tuple[str, str], ...] = ((HEADER, "1"),)
# A bundle holds at most this many items, and is closed before it would pass MAX_BUNDLE_BYTES
# (the peer's receive limit is gRPC's 4 MiB by default; a single item larger than this goes alone).
MAX_BUNDLE_ITEMS = 64
MAX_BUNDLE_BYTES = 1024 * 1024


class Bundling(Protocol):
    """A message type with a ``bundle`` field of its own type."""

    @property
    def bundle(self) -> RepeatedCompositeFieldContainer[Any]: ...

    def ListFields(self) -> Sequence[tuple[Any, Any]]: ...

    def ByteSize(self) -> int: ...


M = TypeVar("M", bound=Bundling)
T = TypeVar("T")


def announced(metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
    """Whether headers ``metadata`` carry the bundles announcement."""
    return any(key == HEADER and value in ("1", b"1") for key, value in metadata or ())


def bundled(items: Sequence[M]) -> M:
    """One message carrying ``items`` in order (the item itself when there is one)."""
    if len(items) == 1:
        return items[0]
    envelope = type(items[0])()
    envelope.bundle.extend(items)
    return envelope


def unbundled(message: M) -> Sequence[M]:
    """The items ``message`` carries, in order (see the module docstring)."""
    if not message.bundle:
        return (message,)
    items: list[M] = []
    _collect(message, items)
    return items


def _collect(message: M, into: list[M]) -> None:
    if not message.bundle:
        into.append(message)
        return
    if len(message.ListFields()) > 1:  # more than the bundle: an item itself
        into.append(message)
    for inner in message.bundle:
        _collect(inner, into)


def take(queue: deque[T], message_of: Callable[[T], Bundling]) -> list[T]:
    """Pop the head of ``queue`` and what follows it, as long as they fit one bundle together.

    A bundle holds at most :data:`MAX_BUNDLE_ITEMS` messages and closes before
    it would pass :data:`MAX_BUNDLE_BYTES`; a head larger than that is taken alone.
    """
    taken = [queue.popleft()]
    if not queue:
        return taken
    size = message_of(taken[0]).ByteSize()
    while queue and len(taken) < MAX_BUNDLE_ITEMS:
        size += message_of(queue[0]).ByteSize()
        if size > MAX_BUNDLE_BYTES:
            break
        taken.append(queue.popleft())
    return taken
