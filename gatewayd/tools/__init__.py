"""Commands for people: the demo, the center tool, status."""
