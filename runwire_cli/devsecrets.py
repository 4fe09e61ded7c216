"""Development secrets kept in the local data folder (``.runwire/`` by default).

``runwire up`` and ``runwire token`` run from the same directory share them:
the JWT signing secret persists across launches (so tokens stay valid), while
the context-attestation key is generated anew for every launch and written
here so ``runwire context mint`` can sign with it.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from runwire_common.attestation import generate_key_spec

DATA_DIR_ENV = "RUNWIRE_DATA_DIR"
DEFAULT_DATA_DIR = ".runwire"
SECRETS_FILE = "dev-secrets.json"


def data_dir(explicit: str | None = None) -> Path:
    """The data folder: ``explicit``, else ``$RUNWIRE_DATA_DIR``, else ``./.runwire``."""
    return Path(explicit or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).resolve()


@dataclass(frozen=True)
class DevSecrets:
    jwt_secret: str
    attestation_keys: str


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)


def load(folder: Path) -> DevSecrets | None:
    path = folder / SECRETS_FILE
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    return DevSecrets(jwt_secret=raw["jwt_secret"], attestation_keys=raw["attestation_keys"])


def load_or_create(folder: Path, *, rotate_attestation: bool) -> DevSecrets:
    """Read the secrets, creating them on first use; optionally a new attestation key."""
    current = load(folder)
    jwt_secret = current.jwt_secret if current else secrets.token_urlsafe(48)
    keys = current.attestation_keys if current and not rotate_attestation else generate_key_spec("dev")
    fresh = DevSecrets(jwt_secret=jwt_secret, attestation_keys=keys)
    if fresh != current:
        _write_private(
            folder / SECRETS_FILE,
            json.dumps({"jwt_secret": jwt_secret, "attestation_keys": keys}, indent=2),
        )
    return fresh


def require(folder: Path) -> DevSecrets:
    found = load(folder)
    if found is None:
        raise SystemExit(
            f"no development secrets in {folder}; start the system with `runwire up` "
            f"(or `make run`) from this directory first, or pass --data-dir"
        )
    return found
