"""The API's one pagination style: limit/offset, with a largest page."""

from __future__ import annotations

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import LimitOffsetPagination


class LimitOffsetPage(LimitOffsetPagination):
    """DRF's limit/offset pagination with ``max_limit``: a larger ``limit`` gets the largest
    page (and a ``next`` link), never an unbounded read. Without it, a ``limit`` beyond
    PostgreSQL's bigint reached the query's LIMIT and came back as a 500.

    A ``limit`` or ``offset`` that is not a whole number in range is a 400 naming it (DRF
    silently serves the first page instead, so a client's bug looks like missing data)."""

    max_limit = 100
    max_offset = 2**62  # PostgreSQL's OFFSET is a bigint: beyond it, the query itself fails

    def _whole(self, request, name: str, *, minimum: int, maximum: int | None = None) -> int | None:
        raw = request.query_params.get(name)
        if raw is None or raw == "":
            return None
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            bound = f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"
            raise ValidationError({name: [f"A whole number {bound} is required."]})
        return value

    def get_limit(self, request):
        limit = self._whole(request, self.limit_query_param, minimum=1)
        return self.default_limit if limit is None else min(limit, self.max_limit)

    def get_offset(self, request):
        return self._whole(request, self.offset_query_param, minimum=0, maximum=self.max_offset) or 0

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.limit_query_param:
                parameter["schema"]["minimum"] = 1
                parameter["description"] = f"Results per page ({self.max_limit} at most: a larger limit gets {self.max_limit})."
            else:
                parameter["schema"].update(minimum=0, maximum=self.max_offset)
        return parameters
