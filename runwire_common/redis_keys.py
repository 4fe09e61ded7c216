"""Redis Cluster hash tags for per-user keys, shared by every service that keys Redis by user.

Redis hashes only what lies between the first ``{`` and the next ``}`` of a
key, so putting the user id there keeps all of one user's keys on one slot
(one script may touch them together) while users spread across shards. An id
may itself hold braces, so it is escaped inside the tag (``%`` → ``%25``,
``{`` → ``%7B``, ``}`` → ``%7D``): the tag never holds a brace whatever the
id, distinct ids keep distinct tags (the escape is injective), and ordinary
ids stay readable as they are.
"""

from __future__ import annotations


def hash_tag(user_id: str) -> str:
    """``user_id`` escaped so it holds no brace (an injective escape: ``%`` is escaped too)."""
    if "%" not in user_id and "{" not in user_id and "}" not in user_id:
        return user_id
    return user_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def user_key_base(prefix: str, user_id: str) -> str:
    """``<prefix>:{<escaped user>}``: the start of every key of ``user_id``, on the user's slot."""
    return f"{prefix}:{{{hash_tag(user_id)}}}"
