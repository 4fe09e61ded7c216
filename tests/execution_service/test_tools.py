from __future__ import annotations

from datetime import datetime

from execution_service.builtins.basic_tools import clock, echo, text_statistics
from execution_service.sdk import ToolCall
from runwire.common.v1 import context_pb2

CALL = ToolCall(
    user=context_pb2.UserContext(user_id="user_tools_000000001"),
    run_id="run_1",
    thread_id="thread_1",
    call_id="call_1",
    tool_name="x",
)


async def test_clock_reports_utc_and_the_requested_offset() -> None:
    result = await clock.handler({"utc_offset_hours": 2}, CALL)
    utc = datetime.fromisoformat(result["utc"].replace("Z", "+00:00"))
    local = datetime.fromisoformat(result["local"])
    offset = local.utcoffset()
    assert utc == local and offset is not None and offset.total_seconds() == 7200
    assert result["weekday"] in {"Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"}


async def test_echo_returns_its_arguments() -> None:
    assert await echo.handler({"a": [1, {"b": None}]}, CALL) == {"a": [1, {"b": None}]}


def test_text_statistics_count_words_lines_and_sentences() -> None:
    stats = text_statistics("Hello world. This is Runwire!\nSecond line without a stop")
    assert stats["words"] == 10
    assert stats["lines"] == 2
    assert stats["sentences"] == 3
    assert stats["characters"] == len("Hello world. This is Runwire!\nSecond line without a stop")
    assert stats["longest_word"] == "Runwire"


def test_text_statistics_of_empty_text_are_zero() -> None:
    stats = text_statistics("")
    assert stats["words"] == stats["lines"] == stats["sentences"] == stats["characters"] == 0
