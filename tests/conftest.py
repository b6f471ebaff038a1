"""Shared test setup. Area fixtures live in tests/*_fixtures.py and are
imported by the tests that use them."""

from tests.cardreader_fixtures import pcscd, vpcd_idle

# Session-scoped: one private pcscd for every PC/SC test module (only one pcscd
# can own /run/pcscd/pcscd.comm), so it is registered here and not per module.
__all__ = ["pcscd", "vpcd_idle"]
