"""gatewayd: the building gateway of a campus one-card system."""

__version__ = "0.1.0"
