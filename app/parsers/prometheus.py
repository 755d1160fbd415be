"""Prometheus's HTTP API answer to an instant query (`GET /api/v1/query`), as JSON text. Pure.

    {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"__name__": "up", "job": "node"}, "value": [1733561234.567, "1"]}, ...]}}
    {"status": "error", "errorType": "bad_data", "error": "1:5: parse error: ..."}

Values are strings ("NaN", "+Inf" too); a series whose value does not parse, or whose labels are not
strings, is left out. Anything other than a vector is refused: the fleet asks only instant vectors.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

__all__ = ["PromAnswerError", "VectorSample", "parse_vector"]


class PromAnswerError(ValueError):
    """Prometheus answered with an error, or with something that is not an instant vector."""


@dataclass(frozen=True)
class VectorSample:
    labels: dict[str, str]  # __name__ included
    value: float


def parse_vector(text: str | bytes, max_series: int) -> tuple[list[VectorSample], bool]:
    """(the samples, whether more than `max_series` were answered and the rest left out)."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise PromAnswerError(f"not JSON: {str(exc)[:100]}") from None
    if not isinstance(doc, dict):
        raise PromAnswerError("not a JSON object")
    if doc.get("status") != "success":
        raise PromAnswerError(f"{str(doc.get('errorType') or 'error')[:50]}: {str(doc.get('error') or '?')[:300]}")
    data = doc.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
        raise PromAnswerError("not an instant vector")
    out: list[VectorSample] = []
    result = data["result"]
    for item in result[:max_series]:
        if not isinstance(item, dict):
            continue
        metric, value = item.get("metric"), item.get("value")
        if not isinstance(metric, dict) or not isinstance(value, list) or len(value) != 2:
            continue
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metric.items()):
            continue
        try:
            number = float(value[1])
        except (TypeError, ValueError):
            continue
        if math.isnan(number):
            continue
        out.append(VectorSample(dict(metric), number))
    return out, len(result) > max_series
