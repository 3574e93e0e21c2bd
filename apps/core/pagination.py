"""The API's one pagination style: limit/offset, with a largest page."""

from __future__ import annotations

from rest_framework.pagination import LimitOffsetPagination


class LimitOffsetPage(LimitOffsetPagination):
    """DRF's limit/offset pagination with ``max_limit``: a larger ``limit`` gets the largest
    page (and a ``next`` link), never an unbounded read. Without it, a ``limit`` beyond
    PostgreSQL's bigint reached the query's LIMIT and came back as a 500."""

    max_limit = 100
