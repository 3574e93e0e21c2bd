"""Reads of the ledger: totals for admin and budgets."""

from __future__ import annotations

from decimal import Decimal

from django.db.models import Count, QuerySet, Sum
from django.db.models.functions import TruncDay


def usage_totals(records: QuerySet) -> dict:
    """Calls, tokens and cost of ``records``: overall and per day, route, user and model."""
    measures = {"calls": Count("id"), "prompt_tokens": Sum("prompt_tokens"),
                "completion_tokens": Sum("completion_tokens"), "cost": Sum("cost_usd")}
    records = records.order_by()

    def grouped(*fields, order=("-cost",), limit=20):
        return list(records.values(*fields).annotate(**measures).order_by(*order)[:limit])

    return {
        "overall": records.aggregate(**measures),
        "per_day": list(records.annotate(day=TruncDay("created_at")).values("day").annotate(**measures)
                        .order_by("-day")[:31]),
        "per_route": grouped("route"),
        "per_user": grouped("user__username"),
        "per_model": grouped("provider", "model"),
    }


def day_chart(per_day: list[dict], *, width: int = 620, height: int = 140) -> dict:
    """Bars (x, y, w, h in SVG units) for cost per day, oldest on the left."""
    days = sorted(per_day, key=lambda row: row["day"])
    peak = max((row["cost"] or Decimal(0) for row in days), default=Decimal(0)) or Decimal(1)
    slot = width / max(len(days), 1)
    bars = []
    for index, row in enumerate(days):
        h = float((row["cost"] or 0) / peak) * (height - 20)
        bars.append({"x": round(index * slot + 2, 1), "w": round(max(slot - 4, 1), 1), "y": round(height - h, 1),
                     "h": round(h, 1), "day": row["day"], "cost": row["cost"] or 0, "calls": row["calls"]})
    return {"bars": bars, "width": width, "height": height, "peak": peak}
