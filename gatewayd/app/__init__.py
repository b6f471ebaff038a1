"""The process: command line, daemon, supervisor, systemd and logs."""
