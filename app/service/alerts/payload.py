"""Alertmanager's webhook payload (version 4), validated. Pure: no I/O.

https://prometheus.io/docs/alerting/latest/configuration/#webhook_config gives the shape. What the
real senders do that the documentation does not say (see tests/fixtures/alertmanager):
- old or non-Alertmanager senders leave out `version`, `groupKey` and `truncatedAlerts`; Alertmanager
  0.5 sent `"version": 0` and `"groupKey": 0` as numbers; alerts may lack `status` (the payload's
  status applies) and `fingerprint` (we derive one from the sorted labels);
- timestamps carry 0 to 9 fractional digits and any offset: normalised for the dedupe key so that
  the two Alertmanagers of an HA pair produce the same key.
Unknown fields are kept (extra="allow"): we forward the alerts as received.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.service.errors import ServiceError

KNOWN_VERSION = "4"
MAX_LABELS = 256
MAX_ERRORS_SHOWN = 5


class PayloadError(ServiceError):
    """The payload cannot be used: `status` is the HTTP status to answer with (4xx), `reason` says why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason, status=status)


class Alert(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: Literal["firing", "resolved"] | None = None
    # Labels must be strings (Alertmanager never sends anything else); numbers are rejected, not
    # coerced, so a sender's bug shows up in its logs instead of as a silent mismatch.
    labels: dict[str, str] = Field(max_length=MAX_LABELS)
    annotations: dict[str, Any] = Field(default_factory=dict)
    startsAt: str | None = None  # noqa: N815 - Alertmanager's names
    endsAt: str | None = None  # noqa: N815
    generatorURL: str | None = None  # noqa: N815
    fingerprint: str | None = None


class WebhookPayload(BaseModel):
    model_config = ConfigDict(extra="allow")

    version: str | int | None = None
    groupKey: str | int | None = None  # noqa: N815
    truncatedAlerts: int | None = None  # noqa: N815
    status: Literal["firing", "resolved"] | None = None
    receiver: str | None = None
    groupLabels: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    commonLabels: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    commonAnnotations: dict[str, Any] = Field(default_factory=dict)  # noqa: N815
    externalURL: str | None = None  # noqa: N815
    alerts: list[Alert]


@dataclass
class IncomingAlert:
    """One alert of a payload, with what the service needs to route and dedupe it."""

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    fingerprint: str
    starts_at: str
    raw: dict[str, Any]  # as received, forwarded unchanged

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def key(self) -> str:
        """What makes two notifications the same alert: Alertmanager's fingerprint + startsAt."""
        return f"{self.fingerprint}@{self.starts_at}"


@dataclass
class ParsedPayload:
    envelope: dict[str, Any]  # the payload without its alerts, to forward a subset
    alerts: list[IncomingAlert]
    warnings: list[str] = field(default_factory=list)


def label_fingerprint(labels: dict[str, str]) -> str:
    """A stable fingerprint from the sorted labels, for senders that do not send one."""
    blob = json.dumps(sorted(labels.items()), separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


_TS = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:?\d{2})?$")


def normalize_timestamp(value: str | None) -> str:
    """RFC 3339 with 0..9 fractional digits and any offset -> UTC ISO with microseconds; else as is.

    `2017-05-09T07:01:37.803000000Z` and `...37.803Z` are the same instant and must dedupe."""
    if not value:
        return ""
    m = _TS.match(value.strip())
    if not m:
        return value.strip()
    date, time_, frac, offset = m.groups()
    frac = (frac or "0")[:6].ljust(6, "0")
    off = offset or "Z"
    if off in ("Z", "z"):
        off = "+00:00"
    elif ":" not in off:
        off = f"{off[:3]}:{off[3:]}"
    try:
        parsed = datetime.fromisoformat(f"{date}T{time_}.{frac}{off}")
        # 9999-12-31T23:59:59-01:00 parses but is past datetime.max in UTC (OverflowError).
        return parsed.astimezone(UTC).isoformat(timespec="microseconds")
    except (ValueError, OverflowError):
        return value.strip()


def _format_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:MAX_ERRORS_SHOWN]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = exc.error_count() - MAX_ERRORS_SHOWN
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)


_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_WALK = 5_000_000  # values in one payload; a 1 MiB body holds at most ~500k (each takes 2+ bytes)


_FieldPath = tuple[Any, ...]  # (parent path, key): a linked list, O(1) per value walked


def _field_name(path: _FieldPath) -> str:
    parts: list[str | int] = []
    while path:
        path, key = path
        parts.append(key)
    out = ""
    for part in reversed(parts):
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            shown = part if part.isidentifier() else json.dumps(part)  # json.dumps escapes surrogates
            out += ("." if out else "") + shown
    return out or "(the payload)"


def find_unencodable(raw: Any) -> str | None:
    """The first field (path) holding a lone UTF-16 surrogate (`"\\ud800"` is valid JSON but not
    text: it cannot be written as UTF-8), in a key or a value; None when there is none."""
    stack: list[tuple[Any, _FieldPath]] = [(raw, ())]
    seen = 0
    while stack:
        value, path = stack.pop()
        seen += 1
        if seen > MAX_WALK:
            return "(the payload)"  # too many values to look at: refused as a whole
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return _field_name(path)
        elif isinstance(value, dict):
            for k, v in value.items():
                if isinstance(k, str) and _SURROGATE.search(k):
                    return _field_name((path, k)) + " (its name)"
                stack.append((v, (path, k)))
        elif isinstance(value, list):
            stack.extend((v, (path, i)) for i, v in enumerate(value))
    return None


def parse_payload(raw: Any, *, max_alerts: int) -> ParsedPayload:
    """Validate a decoded JSON body. Raises PayloadError (413 or 422) with a reason."""
    if not isinstance(raw, dict):
        raise PayloadError(422, f"the payload must be a JSON object, not {type(raw).__name__}")
    alerts = raw.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError(422, "the payload has no `alerts` list")
    if len(alerts) > max_alerts:
        raise PayloadError(413, f"too many alerts in one request: {len(alerts)} > {max_alerts}")
    bad = find_unencodable(raw)
    if bad is not None:
        raise PayloadError(
            422, f"{bad}: contains a lone UTF-16 surrogate (\\ud800-\\udfff), which is not encodable text"
        )

    warnings: list[str] = []
    version = raw.get("version")
    unknown_version = version is not None and str(version) != KNOWN_VERSION
    try:
        payload = WebhookPayload.model_validate(raw)
    except ValidationError as exc:
        reason = f"invalid Alertmanager payload: {_format_errors(exc)}"
        if unknown_version:
            reason += f" (payload version {version!r}; this receiver reads version {KNOWN_VERSION})"
        raise PayloadError(422, reason) from None
    if unknown_version:
        warnings.append(f"payload version {version!r} is not {KNOWN_VERSION}; read as version 4")
    if version is None:
        warnings.append("payload has no version; read as version 4")

    default_status = payload.status or "firing"
    parsed: list[IncomingAlert] = []
    for alert, raw_alert in zip(payload.alerts, alerts, strict=True):
        parsed.append(
            IncomingAlert(
                status=alert.status or default_status,
                labels=dict(alert.labels),
                fingerprint=alert.fingerprint or label_fingerprint(alert.labels),
                starts_at=normalize_timestamp(alert.startsAt),
                raw=raw_alert,
            )
        )
    envelope = {k: v for k, v in raw.items() if k != "alerts"}
    return ParsedPayload(envelope=envelope, alerts=parsed, warnings=warnings)
