"""The webhook token: where it comes from, and the one place it is compared.

`PFI_WEBHOOK_TOKEN_FILE` (the chart mounts a Secret) or, for a first try on one machine, a token
generated into the data dir (mode 0600) and reused on the next start.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from app.config import Settings

log = logging.getLogger(__name__)

GENERATED_TOKEN_NAME = "webhook-token"
MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class TokenSource:
    token: str
    path: Path
    generated: bool  # True: created just now (print it once)


def load_token(settings: Settings) -> TokenSource:
    if settings.webhook_token_file is not None:
        path = settings.webhook_token_file
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise RuntimeError(f"cannot read PFI_WEBHOOK_TOKEN_FILE {path}: {exc}") from None
        if not token:
            raise RuntimeError(f"PFI_WEBHOOK_TOKEN_FILE {path} is empty: refusing to run without a token")
        if len(token) < MIN_TOKEN_LENGTH:
            log.warning("the webhook token in %s is shorter than %d characters", path, MIN_TOKEN_LENGTH)
        return TokenSource(token, path, generated=False)
    path = Path(settings.data_dir) / GENERATED_TOKEN_NAME
    try:
        token = path.read_text().strip()
        if token:
            return TokenSource(token, path, generated=False)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return TokenSource(token, path, generated=True)


def bearer_matches(authorization: str | None, token: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time."""
    if not authorization:
        return False
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())
