"""Reliability campaigns (issue 7): `python -m tests.soak [--short] [--only NAME]`.

`harness` starts a simulated building and the real daemon, kills and restarts
it, and checks the store's invariants; `campaigns` holds one function per
campaign, each returning a `Row` of the table `__main__` prints.
"""
