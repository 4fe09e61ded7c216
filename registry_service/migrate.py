"""``python -m registry_service.migrate``: apply the registry's schema migrations.

Meant to run once per release (a Kubernetes Job) before the replicas start
with ``RUNWIRE_REGISTRY_MIGRATE_ON_START=false``. Reads only the database
settings, so it needs no attestation key.

    python -m registry_service.migrate                    # upgrade to head
    python -m registry_service.migrate upgrade 0001
    python -m registry_service.migrate downgrade base
    python -m registry_service.migrate current
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from registry_service.database import open_database
from registry_service.migrator import current_revision, downgrade_schema, upgrade_schema
from registry_service.settings import DatabaseSettings
from runwire_common.logs import configure_logging
from runwire_common.settings import describe_invalid_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m registry_service.migrate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("action", nargs="?", default="upgrade", choices=("upgrade", "downgrade", "current"))
    parser.add_argument("revision", nargs="?", help="target revision (upgrade: head by default)")
    return parser


async def migrate(settings: DatabaseSettings, action: str, revision: str | None) -> str | None:
    """Run ``action`` and return the revision the database is at afterwards."""
    async with open_database(settings) as database:
        if action == "upgrade":
            await upgrade_schema(database.write_engine(), revision=revision or "head")
        elif action == "downgrade":
            if not revision:
                raise ValueError("downgrade needs a target revision, e.g. `base`")
            await downgrade_schema(database.write_engine(), revision=revision)
        return await current_revision(database.engine)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = DatabaseSettings()
    except ValidationError as exc:
        print(f"registry migrate: invalid configuration: {describe_invalid_settings(exc)}", file=sys.stderr)
        return 2
    configure_logging("registry-migrate")
    try:
        revision = asyncio.run(migrate(settings, args.action, args.revision))
    except ValueError as exc:
        print(f"registry migrate: {exc}", file=sys.stderr)
        return 2
    except Exception:
        logging.getLogger("registry-migrate").exception("migration failed")
        return 1
    print(revision or "base")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
