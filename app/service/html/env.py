"""The Jinja environment every page of the service is written with (the report pages of app.service.ui,
the fleet page and dashboard of app.service.fleet), its formatting filters and the labels and source
bars its templates read. The templates are in templates/ beside this module.

Everything that comes from a report (command lines, pod names, paths, alert labels) is untrusted:
templates never mark it safe, and every value written is passed through `_finalize`, which shows
control and bidi characters (NUL, ESC, BEL, U+202E...) as visible escapes instead of letting them
reorder or hide text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from app.investigation.diagnose import mib
from app.investigation.recommend import headline, owner_text
from app.investigation.who import pod_label as _pod_label
from app.models import Cause, ProcessReport, Source, SourceKind

__all__ = ["CAUSE_LABELS", "KIND_COLOURS", "BarSegment", "as_utc", "environment", "source_bar"]

KIND_COLOURS = {
    SourceKind.FILE.value: "#0072B2",
    SourceKind.SWAP.value: "#D55E00",
    SourceKind.SHMEM.value: "#CC79A7",
    SourceKind.CODE.value: "#009E73",
    SourceKind.UNKNOWN.value: "#9a9a9a",
}
KIND_ORDER = ["file", "code", "swap", "shmem", "unknown"]
KIND_LABELS = {
    "file": "file (page cache)",
    "code": "code (program text)",
    "swap": "swap (anonymous)",
    "shmem": "shmem (tmpfs)",
    "unknown": "unknown",
}

CAUSE_LABELS = {
    Cause.CONTAINER_MEMORY_LIMIT.value: "Container memory limit",
    Cause.NODE_MEMORY_PRESSURE.value: "Node memory pressure",
    Cause.SWAP.value: "Swap-in of anonymous memory",
    Cause.COLD_FILE_READS.value: "Cold file reads",
    Cause.CODE_REFAULTS.value: "Program code refaulting",
    Cause.SHMEM_SWAP.value: "Shared memory back from swap",
    Cause.NO_MAJOR_FAULTS.value: "No major faults",
    Cause.QUIET.value: "Quiet node",
    Cause.UNKNOWN.value: "Unknown cause",
}

# ----------------------------------------------------------------------------------------------
# formatting filters


def _fmt_int(v: float | int | None) -> str:
    if v is None:
        return "–"
    return f"{round(v):,}"


def _fmt_rate(v: float | None) -> str:
    if v is None:
        return "–"
    if v == 0:
        return "0"
    if abs(v) < 10:
        return f"{v:,.1f}"
    return f"{v:,.0f}"


def _fmt_pct(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "–"
    pct = v * 100
    floor = 10**-digits
    if 0 < pct < floor:
        return f"<{floor:g}%"
    return f"{pct:.{digits}f}%"


def _fmt_bytes(v: int | float | None) -> str:
    if v is None:
        return "–"
    v = float(v)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(v) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{v:.0f} B"
            return f"{v:.1f} {unit}" if abs(v) < 10 else f"{v:.0f} {unit}"
        v /= 1024
    return f"{v:.0f} TiB"  # pragma: no cover


def as_utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def _fmt_day(dt: datetime | None) -> str:
    utc = as_utc(dt)
    return utc.strftime("%Y-%m-%d") if utc else "–"


def _fmt_clock(dt: datetime | None) -> str:
    utc = as_utc(dt)
    return utc.strftime("%H:%M:%S") if utc else ""


def _fmt_dt(dt: datetime | None) -> str:
    dt = as_utc(dt)
    return "–" if dt is None else dt.strftime("%Y-%m-%d %H:%M:%S UTC")


_FRACTION = re.compile(r"(\.\d{1,6})\d*")


def _fmt_stamp(text: str | None) -> str:
    """An alert's RFC 3339 time (Alertmanager's startsAt: '2026-12-07T06:53:32.838024352Z') as the page
    writes times; text that is not one is shown as it came."""
    if not text:
        return "–"
    try:
        return _fmt_dt(datetime.fromisoformat(_FRACTION.sub(r"\1", text.strip()).replace("Z", "+00:00")))
    except ValueError:
        return text


def _iso(dt: datetime | None) -> str:
    dt = as_utc(dt)
    return "" if dt is None else dt.isoformat()


def _fmt_seconds(v: float | None) -> str:
    if v is None:
        return "–"
    if v < 90:
        return f"{v:.0f} s" if v >= 10 or v == int(v) else f"{v:.1f} s"
    return f"{v / 60:.1f} min"


def _safe_url(url: str | None) -> str:
    """Links come from the service, but never let one run script: relative or http(s) only."""
    u = (url or "").strip()
    scheme = u.split(":", 1)[0].lower() if ":" in u.split("/", 1)[0] else ""
    return u if scheme in ("", "http", "https") else "#"


# ----------------------------------------------------------------------------------------------
# source bars


@dataclass
class BarSegment:
    kind: str
    label: str
    colour: str
    share: float  # 0..1 of the bar
    faults: int


def source_bar(p: ProcessReport) -> list[BarSegment]:
    """The process's sources summed by kind, in a fixed kind order, shares normalised to the bar."""
    by_kind: dict[str, int] = {}
    share_by_kind: dict[str, float] = {}
    for s in p.sources:
        k = s.kind.value if isinstance(s.kind, SourceKind) else str(s.kind)
        by_kind[k] = by_kind.get(k, 0) + s.faults
        share_by_kind[k] = share_by_kind.get(k, 0.0) + s.share
    total = sum(by_kind.values())
    total_share = sum(share_by_kind.values())
    segs = []
    for k in KIND_ORDER + sorted(set(by_kind) - set(KIND_ORDER)):
        if k not in by_kind:
            continue
        if total > 0:
            share = by_kind[k] / total
        elif total_share > 0:  # estimated sources may carry shares but no counts
            share = share_by_kind[k] / total_share
        else:
            continue
        if share <= 0:
            continue
        segs.append(BarSegment(k, KIND_LABELS.get(k, k), KIND_COLOURS.get(k, "#9a9a9a"), share, by_kind[k]))
    return segs


def _hot_ranges(s: Source) -> tuple[list[str], int]:
    ranges = sorted(s.hot_ranges, key=lambda r: r.faults, reverse=True)
    shown = [f"{_fmt_bytes(r.start)}–{_fmt_bytes(r.end)}: {r.faults:,}" for r in ranges[:3]]
    return shown, max(0, len(ranges) - 3)


# ----------------------------------------------------------------------------------------------
# environment


def _finalize(value: Any) -> Any:
    """Every `{{ value }}`: strings with control characters get them as visible escapes (`\\x1b`,
    `\\u202e`); line breaks and tabs stay (HTML folds them)."""
    if isinstance(value, str) and not isinstance(value, Markup) and not value.isprintable():
        from app.service.logs import visible  # one definition of "visible" (the logs use it too)

        return "\n".join("\t".join(visible(part) for part in line.split("\t")) for line in value.split("\n"))
    return value


@lru_cache(maxsize=1)
def environment() -> Environment:
    """The one environment (made once): templates/, autoescaped, strict, every value finalized."""
    env = Environment(
        loader=PackageLoader("app.service.html", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_finalize,
    )
    env.filters.update(
        int=_fmt_int,
        rate=_fmt_rate,
        pct=_fmt_pct,
        bytes=_fmt_bytes,
        mib=mib,  # limits are written in MiB, as the recommendation says them
        dt=_fmt_dt,
        stamp=_fmt_stamp,
        day=_fmt_day,
        clock=_fmt_clock,
        iso=_iso,
        secs=_fmt_seconds,
        url=_safe_url,
    )
    env.globals.update(
        pod_label=_pod_label,
        source_bar=source_bar,
        hot_ranges=_hot_ranges,
        cause_label=lambda c: CAUSE_LABELS.get(str(c), str(c).replace("_", " ")),
        rec_headline=headline,
        owner_text=owner_text,
        kind_colours=KIND_COLOURS,
        kind_labels=KIND_LABELS,
        kind_order=KIND_ORDER,
    )
    return env
