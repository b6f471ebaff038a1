"""`python -m tests.soak [--short] [--only NAME ...]`: run the campaigns, print the table.

Exits 1 when any campaign found a violation (each is printed below the table).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Sequence

from gatewayd.app import logs
from tests.soak.campaigns import CAMPAIGNS, FULL, SHORT
from tests.soak.harness import Row

# "kill 12: ", "round 3: "...: where in a campaign a violation was seen.
STEP = re.compile(r"^(kill|cycle|round|step) \d+: ")


def table(rows: Sequence[Row]) -> str:
    head = ("campaign", "iterations", "faults injected", "invariant checks", "violations", "seconds")
    body = [(r.campaign, str(r.iterations), str(r.faults), str(r.checks), str(len(r.violations)),
             f"{r.seconds:.0f}") for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    rows_text = ["| " + " | ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) + " |"
                 for b in body]
    return "\n".join([line, rule, *rows_text])


async def run(names: Sequence[str], short: bool) -> list[Row]:
    rows = []
    for name in names:
        n = (SHORT if short else FULL)[name]
        print(f"running {name} ({n} iterations)...", file=sys.stderr, flush=True)
        row = await CAMPAIGNS[name](n)
        print(f"  {name}: {row.checks} checks, {len(row.violations)} violations, "
              f"{row.seconds:.0f} s", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    p.add_argument("--short", action="store_true", help="the short versions (as in make test)")
    p.add_argument("--only", action="append", choices=sorted(CAMPAIGNS), metavar="NAME",
                   help=f"run only this campaign (repeatable): {', '.join(CAMPAIGNS)}")
    args = p.parse_args(argv)
    logs.setup("error", json=False)  # the harness' own store use (seeding) stays quiet
    names = args.only or list(CAMPAIGNS)
    rows = asyncio.run(run(names, args.short))
    print(table(rows))
    for r in rows:
        for note in r.notes:
            print(f"{r.campaign}: {note}")
    failed = False
    for r in rows:
        # The same fault seen again at every later iteration is one finding: group them.
        groups: dict[str, list[str]] = {}
        for v in r.violations:
            groups.setdefault(STEP.sub("", v), []).append(v)
        for what, seen in groups.items():
            first = seen[0].split(":", 1)[0] if STEP.match(seen[0]) else ""
            more = f" (x{len(seen)}, first at {first})" if len(seen) > 1 and first else (
                f" (x{len(seen)})" if len(seen) > 1 else "")
            print(f"VIOLATION {r.campaign}: {seen[0] if len(seen) == 1 else what}{more}")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
