"""``python -m execution_service``: run one execution replica until SIGTERM."""

from __future__ import annotations

from execution_service.app import running_service
from execution_service.settings import ExecutionSettings
from runwire_common.process import run_service
from runwire_common.server import wait_for_termination


def load_settings() -> ExecutionSettings:
    return ExecutionSettings()  # type: ignore[call-arg]  # read from the environment


async def main(settings: ExecutionSettings) -> None:
    async with running_service(settings):
        await wait_for_termination()


if __name__ == "__main__":
    run_service("execution", load_settings, main)
