"""Write the machine-readable contract: docs/schemas/*.json and docs/asyncapi.yaml.

``python -m gatewayd.tools.contract_docs`` (``make schemas``) writes both from
the code (``contract.schemas.json_schemas``, ``tools.asyncapi``); with
``--check`` it writes nothing and exits 1 when the committed files differ
from what it would write, naming them. Files are UTF-8, keys in the order the
code gives, a newline at the end, so a change of the contract is a readable
diff.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Final

from gatewayd.contract.schemas import json_schemas
from gatewayd.tools.asyncapi import asyncapi_document

__all__ = ["expected_files", "main", "to_yaml"]

_PLAIN_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_PLAIN_TEXT: Final = re.compile(r"[A-Za-z][A-Za-z0-9_./+\-]*")
_YAML_WORDS: Final = frozenset({"true", "false", "null", "yes", "no", "on", "off", "y", "n"})


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if _PLAIN_TEXT.fullmatch(text) and text.lower() not in _YAML_WORDS:
        return text
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar


def _key(key: str) -> str:
    plain = _PLAIN_KEY.fullmatch(key) and key.lower() not in _YAML_WORDS
    return key if plain else json.dumps(key, ensure_ascii=False)


def _block(node: Any, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(node, dict):
        lines = []
        for key, value in node.items():
            if isinstance(value, dict | list) and value:
                lines += [f"{pad}{_key(key)}:", *_block(value, indent + 2)]
            else:
                lines.append(f"{pad}{_key(key)}: {_flow(value)}")
        return lines
    lines = []
    for item in node:
        if isinstance(item, dict | list) and item:
            inner = _block(item, indent + 2)
            lines += [f"{pad}- {inner[0].lstrip()}", *inner[1:]]
        else:
            lines.append(f"{pad}- {_flow(item)}")
    return lines


def _flow(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def to_yaml(document: dict[str, Any]) -> str:
    """``document`` (dicts, lists, strings, integers, booleans, None) as block YAML."""
    return "\n".join(_block(document, 0)) + "\n"


def expected_files() -> dict[str, str]:
    """What the generator writes, by path under docs/."""
    files = {f"schemas/{name}": json.dumps(schema, ensure_ascii=False, indent=2) + "\n"
             for name, schema in json_schemas().items()}
    header = ("# The center link as AsyncAPI 3.0. Generated from the code: do not edit;\n"
              "# run `make schemas` (python -m gatewayd.tools.contract_docs).\n")
    files["asyncapi.yaml"] = header + to_yaml(asyncapi_document())
    return files


def _stale(docs: Path, expected: dict[str, str]) -> list[str]:
    """Files that differ from what would be written, or should not be there."""
    wrong = [p for p, text in expected.items()
             if not (docs / p).is_file() or (docs / p).read_text(encoding="utf-8") != text]
    extra = [f"schemas/{p.name}" for p in sorted((docs / "schemas").glob("*.json"))
             if f"schemas/{p.name}" not in expected]
    return wrong + extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gatewayd.tools.contract_docs", description=__doc__)
    parser.add_argument("--docs", type=Path, default=Path("docs"), help="the docs/ folder (default: ./docs)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs")
    args = parser.parse_args(argv)
    docs: Path = args.docs
    expected = expected_files()
    stale = _stale(docs, expected) if (docs / "schemas").is_dir() else sorted(expected)
    if args.check:
        for path in stale:
            print(f"{docs / path}: differs from the code; run `make schemas`", file=sys.stderr)
        return 1 if stale else 0
    (docs / "schemas").mkdir(parents=True, exist_ok=True)
    for path in stale:
        target = docs / path
        if path in expected:
            target.write_text(expected[path], encoding="utf-8")
        else:
            target.unlink()
        print(f"wrote {target}" if path in expected else f"removed {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
