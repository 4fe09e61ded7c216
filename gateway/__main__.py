"""``python -m gateway``: serve WebSockets until SIGTERM/SIGINT, then drain."""

from __future__ import annotations

import logging

from gateway.app import running_gateway
from gateway.settings import GatewaySettings
from runwire_common.process import run_service
from runwire_common.server import wait_for_termination


async def main(settings: GatewaySettings) -> None:
    # websockets logs every HTTP exchange (health probes included) at INFO; keep warnings.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, logging.getLogger().level))
    async with running_gateway(settings):
        await wait_for_termination()


def load_settings() -> GatewaySettings:
    return GatewaySettings()  # type: ignore[call-arg]  # required fields come from the environment


if __name__ == "__main__":
    run_service("gateway", load_settings, main)
