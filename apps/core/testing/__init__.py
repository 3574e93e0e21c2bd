"""Test doubles of the outside world for apps.core (never used outside tests)."""
