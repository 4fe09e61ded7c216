"""Who owns a run, a thread or an event stream: ``(tenant_id, user_id)``.

Equal subjects (JWT ``sub``) in two tenants are two owners. Every store and
every stream keyed by its owner uses :func:`owner_key`, so that one function
decides what "the same owner" means everywhere (the bridge's logs, Redis keys
and fan-out, the gateway's feeds and limits, the executor's engines, the
replica chosen for an owner). The registry filters on both columns instead.

The key of an owner without a tenant is its ``user_id`` unchanged, so data
written before tenants counted (Redis keys, logs) still belongs to the same
owner. With a tenant the key starts with a control character, which no valid
id holds (:func:`runwire_common.context.id_problem`), then the tenant's length
and the tenant, then the user: no tenant-less key equals a tenanted one, and
tenant ``"a:b"`` / user ``"c"`` never meets tenant ``"a"`` / user ``"b:c"``.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

# The "information separator" control characters: never part of an id.
TENANT_MARK = "\x1d"


class Owned(Protocol):
    """Anything that names its owner: a ``UserContext``, a ``RunEvent``, a run record."""

    @property
    def tenant_id(self) -> str: ...

    @property
    def user_id(self) -> str: ...


class Owner(NamedTuple):
    tenant_id: str
    user_id: str

    @property
    def key(self) -> str:
        return owner_key(self.tenant_id, self.user_id)


def owner_key(tenant_id: str, user_id: str) -> str:
    """The string that stands for the owner ``(tenant_id, user_id)`` (see module doc)."""
    if not tenant_id:
        return user_id
    return f"{TENANT_MARK}{len(tenant_id)}:{tenant_id}{user_id}"


def owner_of(item: Owned) -> Owner:
    """The owner named by ``item``'s ``tenant_id`` and ``user_id``."""
    return Owner(item.tenant_id, item.user_id)


def key_of(item: Owned) -> str:
    """``owner_key`` of ``item``'s owner."""
    return owner_key(item.tenant_id, item.user_id)
