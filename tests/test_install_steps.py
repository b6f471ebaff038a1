"""Issue 18, installing: the README's install steps as written, a wheelhouse installed
with the index switched off, and `make demo` installing only what the demo needs."""

from __future__ import annotations

import argparse
import configparser
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gatewayd.app.cli import _parser
from gatewayd.contract.signing import generate_keypair
from gatewayd.tools.centertool import fingerprint

REPO = Path(__file__).resolve().parent.parent
MARKER = "<!-- install-steps"


def install_steps() -> list[str]:
    """The commands of the README's install block, comments and blank lines left out."""
    text = (REPO / "README.md").read_text()
    block = text[text.index(MARKER):]
    block = block[block.index("```sh\n") + 6:]
    block = block[:block.index("```\n")]
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(REPO / "systemd" / "gatewayd.service")
    return unit


def test_install_steps_name_what_the_repository_and_the_unit_have() -> None:
    steps = install_steps()
    text = "\n".join(steps)
    service = _unit()["Service"]
    # The unit runs what the steps install, with the config they write, as the user they add.
    binary, *args = shlex.split(service["ExecStart"])
    assert binary == "/opt/gatewayd/.venv/bin/gatewayd" and args[:2] == ["run", "-c"]
    assert "python3 -m venv /opt/gatewayd/.venv" in text
    assert f"/opt/gatewayd/conf/example.toml {args[2]}" in text
    useradd = next(shlex.split(s) for s in steps if "useradd" in s)
    assert useradd[-1] == service["User"] == service["Group"]
    assert useradd[useradd.index("--groups") + 1] == service["SupplementaryGroups"]
    assert useradd[useradd.index("--home-dir") + 1] == f"/var/lib/{service['StateDirectory']}"
    assert "/opt/gatewayd/systemd/gatewayd.service /etc/systemd/system/" in text
    # Files taken from the source tree exist in it.
    for rel in re.findall(r"/opt/gatewayd/((?:conf|systemd)/[\w./-]+)", text):
        assert (REPO / rel).is_file(), rel
    # Every gatewayd subcommand exists, and every program is one a Debian box has.
    subparsers = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    commands = set(subparsers[0].choices)
    for sub in re.findall(r"bin/gatewayd (\S+)", text):
        assert sub in commands, sub
    for step in steps:
        lexer = shlex.shlex(step.replace("sudo -u gatewayd ", "").replace("sudo ", ""),
                            posix=True, punctuation_chars=True)
        tokens = list(lexer)
        programs = [t for i, t in enumerate(tokens) if i == 0 or tokens[i - 1] in ("|", "&&", ";")]
        for program in programs:
            assert program.startswith("/opt/") or shutil.which(program), program
    # The order: enabled last, checked before.
    assert steps.index("sudo systemctl enable --now gatewayd") > next(
        i for i, s in enumerate(steps) if "check-config" in s)


def test_the_steps_that_write_etc_gatewayd_run_in_their_order(tmp_path: Path) -> None:
    """The lines that touch /etc/gatewayd run as written, in a temporary root: a
    secret is never chowned before it exists, and each ends with the mode it needs."""
    root = tmp_path / "root"
    (root / "tmp").mkdir(parents=True)
    (root / "opt" / "gatewayd").mkdir(parents=True)
    (root / "opt" / "gatewayd" / "conf").symlink_to(REPO / "conf")
    pair = generate_keypair()
    (root / "tmp" / "center.pub").write_bytes(pair.public_pem)
    for name in ("gw-b07.key", "gw-b07.pem", "ca.pem"):
        (root / "tmp" / name).write_text(f"{name}\n")
    owner = f"{os.getuid()}:{os.getgid()}"
    outputs = []
    for step in install_steps():
        if "/etc/gatewayd" not in step or re.search(r"gatewayd (check-config|status)", step):
            continue
        line = (step.replace("sudo -u gatewayd ", "").replace("sudo ", "")
                .replace("root:gatewayd", owner).replace("-g gatewayd", f"-g {os.getgid()}"))
        line = re.sub(r"(?<=[ >])/(etc|opt|tmp)/", lambda m: f"{root}/{m.group(1)}/", line)
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", line], input="broker secret\n",
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, (step, done.stderr)
        outputs.append(done.stdout)
    etc = root / "etc" / "gatewayd"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in etc.iterdir()}
    assert modes == {"gateway.toml": 0o644, "mqtt.password": 0o640, "gw-b07.key": 0o640,
                     "gw-b07.pem": 0o644, "ca.pem": 0o644, "center.pub": 0o644}
    assert (etc / "mqtt.password").read_text() == "broker secret\n"
    # The fingerprint the installer compares is the one `gatewayd keygen` printed at the center.
    assert any(out.split()[:1] == [fingerprint(pair.public_pem)] for out in outputs), outputs


def _make(*args: str) -> str:
    done = subprocess.run(["make", "-n", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_installs_only_what_the_demo_needs(tmp_path: Path) -> None:
    venv = f"VENV={tmp_path / 'v'}"
    demo = _make("demo", venv)
    assert "pip install -q -e .\n" in demo and "gatewayd demo" in demo
    for not_for_the_demo in ("[test", "pcsc", "gcc", "libpcsclite", "vsmartcard"):
        assert not_for_the_demo not in demo, not_for_the_demo
    assert "for p in mosquitto python3-venv;" in demo
    test = _make("test", venv)
    assert "pip install -q -e '.[test,pcsc]'" in test and "pcscd" in test


def _clean_pip_env() -> dict[str, str]:
    """No pip configuration and no extra index or links: only what the command line says."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_a_wheelhouse_installs_with_the_index_switched_off(tmp_path: Path) -> None:
    wheelhouse = tmp_path / "wheelhouse"
    built = subprocess.run(["make", "-s", "wheelhouse", f"WHEELHOUSE={wheelhouse}"], cwd=REPO,
                           capture_output=True, text=True, timeout=600)
    if built.returncode != 0:
        pytest.skip("no wheelhouse could be built here (a dependency without a wheel and no "
                    f"network?): {built.stderr.strip().splitlines()[-1:]}")
    assert any(p.name.startswith("gatewayd-") for p in wheelhouse.glob("*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-index", "--find-links", str(wheelhouse),
         "gatewayd"], cwd=tmp_path, env=_clean_pip_env(), capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    gatewayd = str(venv / "bin" / "gatewayd")
    run = {"cwd": tmp_path, "env": _clean_pip_env(), "capture_output": True, "text": True, "timeout": 60}
    version = subprocess.run([gatewayd, "--version"], **run)  # type: ignore[call-overload]
    assert version.stdout.strip() == "gatewayd 0.1.0", version.stderr
    # The shipped profiles came along in the wheel: the example config checks.
    checked = subprocess.run([gatewayd, "check-config", str(REPO / "conf" / "example.toml")], **run)  # type: ignore[call-overload]
    assert checked.returncode == 0, checked.stderr
    assert "ok, building b07" in checked.stdout
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import gatewayd; print(gatewayd.__file__)"],
                           **run)  # type: ignore[call-overload]
    assert where.stdout.startswith(str(venv)), where.stdout  # the installed copy, not the source tree
