"""The import rules of the README's "Development" section, checked on the source.

Folders are layers and imports point down. A test, so that a shortcut taken in
a hurry (a service importing the center link, a rule importing the store, the
daemon importing pymodbus) fails the suite instead of eroding the design.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What each layer of gatewayd/ may import from gatewayd/ (besides itself and
# gatewayd/errors.py, gatewayd/__init__.py). None: anything.
MAY_IMPORT: dict[str, set[str] | None] = {
    "app": None,
    "tools": None,
    "center": {"services", "store", "config", "rules", "contract"},
    "services": {"store", "config", "rules", "contract"},
    "store": {"rules", "contract"},
    "config": {"contract"},   # key files are checked with the signing code
    "rules": {"config.model", "contract"},
    "contract": set(),
}
HARDWARE_LIBRARIES = ("pymodbus", "serial", "serial_asyncio_fast", "smartcard")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def _sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _allowed(layer: str, name: str) -> bool:
    allowed = MAY_IMPORT[layer]
    if allowed is None or not name.startswith("gatewayd."):
        return True
    rest = name.removeprefix("gatewayd.")
    if rest.split(".")[0] in {layer, "errors", "__version__"}:
        return True
    return any(rest == a or rest.startswith(a + ".") for a in allowed)


@pytest.mark.parametrize("layer", sorted(MAY_IMPORT))
def test_gatewayd_layers_import_downwards(layer: str) -> None:
    wrong = [f"{p.relative_to(ROOT)}: {name}" for p in _sources(f"gatewayd/{layer}")
             for name in _imports(p) if not _allowed(layer, name)]
    assert wrong == []


def test_drivers_import_nothing_of_gatewayd_or_sim() -> None:
    wrong = [f"{p.relative_to(ROOT)}: {name}" for p in _sources("drivers")
             for name in _imports(p) if name.split(".")[0] in {"gatewayd", "sim"}]
    assert wrong == []


def test_only_drivers_touch_hardware_libraries() -> None:
    wrong = [f"{p.relative_to(ROOT)}: {name}" for p in _sources("gatewayd")
             for name in _imports(p) if name.split(".")[0] in HARDWARE_LIBRARIES]
    assert wrong == []


def test_the_daemon_never_imports_the_simulators() -> None:
    # The demo (gatewayd/tools) runs the simulators in processes of their own.
    wrong = [f"{p.relative_to(ROOT)}: {name}" for p in _sources("gatewayd")
             if "tools" not in p.relative_to(ROOT).parts
             for name in _imports(p) if name.split(".")[0] == "sim"]
    assert wrong == []


def test_run_loads_the_optional_endpoints_only_when_configured() -> None:
    """`gatewayd run` without [metrics] or [web] carries neither prometheus_client (most
    of a megabyte) nor the status page; nor the staff tools."""
    code = ("import sys, gatewayd.app.cli, gatewayd.app.daemon; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'prometheus_client' "
            "or m.startswith(('gatewayd.services.metrics', 'gatewayd.services.status_page', "
            "'gatewayd.tools.'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_check_can_fail() -> None:
    assert not _allowed("rules", "gatewayd.store.db")
    assert not _allowed("services", "gatewayd.center.link")
    assert _allowed("rules", "gatewayd.config.model")
    assert not _allowed("rules", "gatewayd.config.load")
