"""Simulators of building hardware, for tests, benchmarks and demos (not used by the daemon)."""
