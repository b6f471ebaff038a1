"""The TOML file: load and validate into frozen objects."""
