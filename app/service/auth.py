"""The webhook token: where it comes from, and the one place it is compared.

`PFI_WEBHOOK_TOKEN_FILE` (the chart mounts a Secret) or, for a first try on one machine, a token
generated into the data dir (mode 0600) and reused on the next start.

Rotation: `TokenWatcher` stats the file on each use (a few microseconds) and re-reads it when its
identity changes (device, inode, size, mtime): a rewrite in place and the kubelet's atomic swap of
the `..data` symlink both count. A rewrite that keeps size and mtime (`cp -p`, `rsync -t`) does not
change the identity, so the file is also re-read and its hash compared every `RECHECK_SECONDS`.
A file that became empty, unreadable or holds a token shorter than `MIN_TOKEN_LENGTH` keeps the
last good token (logged once), so a half-finished or mistaken rotation never locks Alertmanager out
nor lets a guessable token in.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from app.config import StoreSettings, WebSettings

log = logging.getLogger(__name__)

GENERATED_TOKEN_NAME = "webhook-token"
MIN_TOKEN_LENGTH = 16
RECHECK_SECONDS = 3.0  # re-read and hash the token file at most this often even if stat shows no change


@dataclass(frozen=True)
class TokenSource:
    token: str
    path: Path
    generated: bool  # True: created just now (print it once)


class TokenSettings(Protocol):
    """What the webhook token needs: its file (web), else the store's folder where one is generated. `app.config.Settings` is one."""

    @property
    def web(self) -> WebSettings: ...

    @property
    def store(self) -> StoreSettings: ...


def load_token(settings: TokenSettings) -> TokenSource:
    if settings.web.webhook_token_file is not None:
        path = settings.web.webhook_token_file
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise RuntimeError(f"cannot read PFI_WEBHOOK_TOKEN_FILE {path}: {exc}") from None
        if not token:
            raise RuntimeError(f"PFI_WEBHOOK_TOKEN_FILE {path} is empty: refusing to run without a token")
        if len(token) < MIN_TOKEN_LENGTH:
            log.warning("the webhook token in %s is shorter than %d characters", path, MIN_TOKEN_LENGTH)
        return TokenSource(token, path, generated=False)
    path = Path(settings.store.data_dir) / GENERATED_TOKEN_NAME
    try:
        token = path.read_text().strip()
        if token:
            return TokenSource(token, path, generated=False)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    parent = path.parent.stat()
    if (parent.st_mode & 0o777) != 0o700 and parent.st_uid == os.geteuid():  # never another user's
        os.chmod(path.parent, 0o700)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
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


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks: a swapped ..data shows as another inode
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class TokenWatcher:
    """The current webhook token. `path=None`: a fixed token (tests, a token passed in)."""

    def __init__(
        self,
        token: str,
        path: Path | None = None,
        *,
        recheck_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._token = token
        self.path = path
        self._seen = _identity(path) if path is not None else None
        self._digest: bytes | None = None  # of the file's bytes last read
        self._problem: str | None = None
        self._recheck = RECHECK_SECONDS if recheck_seconds is None else recheck_seconds
        self._clock = clock
        self._next_check = clock() + self._recheck

    @classmethod
    def from_source(cls, source: TokenSource) -> TokenWatcher:
        return cls(source.token, source.path)

    @property
    def token(self) -> str:
        if self.path is None:
            return self._token
        ident = _identity(self.path)
        now = self._clock()
        if ident is not None and (ident != self._seen or now >= self._next_check):
            self._next_check = now + self._recheck
            self._reload(ident)
        return self._token

    def _reload(self, ident: tuple[int, int, int, int]) -> None:
        assert self.path is not None
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            self._complain(f"cannot read {self.path}: {exc}")
            return
        digest = hashlib.sha256(raw).digest()
        if digest == self._digest:  # the timer's re-read of an unchanged file: nothing to do
            self._seen = ident
            self._problem = None
            return
        try:
            token = raw.decode().strip()
        except UnicodeDecodeError as exc:
            self._complain(f"cannot read {self.path}: {exc}")
            return
        if not token:
            self._complain(f"{self.path} is empty")
            return
        if len(token) < MIN_TOKEN_LENGTH:
            self._complain(f"the token in {self.path} is shorter than {MIN_TOKEN_LENGTH} characters")
            return
        self._seen = ident
        self._digest = digest
        self._problem = None
        if token != self._token:
            self._token = token
            log.info("webhook token re-read from %s (it changed)", self.path)

    def _complain(self, problem: str) -> None:
        if problem != self._problem:
            log.warning("webhook token: %s; keeping the last good token", problem)
        self._problem = problem
