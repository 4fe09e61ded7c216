"""``python -m bridge_service``: serve the bridge until SIGTERM, then drain."""

from __future__ import annotations

from bridge_service.app import running_service
from bridge_service.settings import BridgeSettings
from runwire_common.process import run_service
from runwire_common.server import wait_for_termination


def load_settings() -> BridgeSettings:
    """Read ``RUNWIRE_BRIDGE_*`` and ``RUNWIRE_ATTESTATION_KEYS`` from the environment."""
    return BridgeSettings()  # type: ignore[call-arg]  # fields come from the environment


async def main(settings: BridgeSettings) -> None:
    async with running_service(settings):
        await wait_for_termination()


if __name__ == "__main__":
    run_service("bridge", load_settings, main)
