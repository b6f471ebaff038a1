"""Shared test setup. Area fixtures live in tests/*_fixtures.py and are
imported by the tests that use them."""
