"""`python -m gatewayd`: the command line."""

from gatewayd.app.cli import main

raise SystemExit(main())
