"""What every Quire model admin shares."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import DataError


class InvalidLookupsMixin:
    """A list filter the database or Python cannot apply is Django admin's "invalid lookup"
    page (a redirect with ``?e=1``), not a 500: a year past 9999 in the date hierarchy
    (``?created_at__year=99999999999``, OverflowError), a NUL in a filter value
    (``?tags__contains=%00``, PostgreSQL's DataError)."""

    def get_changelist_instance(self, request):
        try:
            return super().get_changelist_instance(request)
        except (OverflowError, DataError) as exc:
            raise IncorrectLookupParameters(exc) from exc


class QuireModelAdmin(InvalidLookupsMixin, admin.ModelAdmin):
    """What every Quire model admin shares."""


# Django's own user and group admins, with the same answer to impossible filters
# (``/admin/auth/user/?date_joined__year=99999999999`` was a 500).
for model in (get_user_model(), Group):
    if admin.site.is_registered(model):
        registered = type(admin.site.get_model_admin(model))
        admin.site.unregister(model)
        admin.site.register(model, type(registered.__name__, (InvalidLookupsMixin, registered), {}))
