"""``python -m registry_service``: run the registry until SIGTERM."""

from __future__ import annotations

from registry_service.app import running_service
from registry_service.settings import RegistrySettings
from runwire_common.process import run_service
from runwire_common.server import wait_for_termination


async def main(settings: RegistrySettings) -> None:
    async with running_service(settings):
        await wait_for_termination()


def load_settings() -> RegistrySettings:
    return RegistrySettings()  # type: ignore[call-arg]  # attestation_keys comes from the environment


if __name__ == "__main__":
    run_service("registry", load_settings, main)
