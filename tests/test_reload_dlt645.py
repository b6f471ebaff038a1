"""`systemctl reload gatewayd` (SIGHUP) and a DL/T 645 relay's new password: the daemon
as a process, the simulated meter line on a pseudo-terminal. A new password sheet in
the same `password_file` reaches the running relay without a restart."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from zoneinfo import ZoneInfo

from drivers.dlt645.credentials import Credentials
from sim.dlt645 import SimDltLine, SimDltMeter
from tests.test_dlt645_daemon import alarms
from tests.test_power import Daemon, seed, until

TZ = ZoneInfo("Asia/Shanghai")
ADDRESS = "000000040100"
OLD, NEW = "02:123456:00000001", "02:654321:00000001"


def write_config(tmp: Path, line: SimDltLine) -> Path:
    secret = tmp / "meter.password"
    secret.write_text(OLD + "\n")
    secret.chmod(0o640)
    path = tmp / "gateway.toml"
    path.write_text(f"""
[gateway]
building = "b07"
timezone = "Asia/Shanghai"
state_dir = "{tmp / 'state'}"
poll_interval_s = 0.2
clock_synced = "yes"

[tariffs]
power = {{ price = "10", unit = "kWh" }}

[power]
low_balance_fen = 0

[[buses]]
name = "dlt"
type = "rtu"
protocol = "dlt645"
port = "{line.client_port}"
baudrate = 9600
parity = "N"
timeout_s = 0.2
retries = 0

[[rooms]]
id = "401"
max_power_w = 100000
meter = {{ bus = "dlt", address = "{ADDRESS}", profile = "dlt645-2007" }}
[rooms.breaker]
bus = "dlt"
address = "{ADDRESS}"
profile = "dlt645-2007-relay"
password_file = "meter.password"
""")
    return path


async def test_a_new_password_in_the_same_file_is_used_after_a_reload(tmp_path: Path) -> None:
    meter = SimDltMeter(ADDRESS, tz=TZ)
    # The meter was given a new password; the file still has the old sheet's.
    meter.credentials = Credentials(level=2, password=0x654321, operator=1)
    meter.physics.power_w = 36_000.0   # 10 fen a second at 1 fen/Wh
    line = SimDltLine([meter], baudrate=9600)
    await line.start()
    seed(tmp_path, {"room-b07-401": 20})
    config = write_config(tmp_path, line)
    daemon = Daemon(config)
    await daemon.start()
    try:
        # Out of money: the cut is refused (the old password), the relay stays closed.
        mismatch = await until(lambda: alarms(tmp_path, "breaker_mismatch", "breaker:401"),
                               timeout=30)
        assert mismatch[0]["active"] is True
        assert meter.commands and meter.relay_closed
        # The new sheet, in the same file; then `systemctl reload gatewayd`.
        (tmp_path / "meter.password").write_text(NEW + "\n")
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        # The relay is made anew with the new password: the cut the rules call for works.
        await until(lambda: not meter.relay_closed, timeout=30)
        cleared = await until(lambda: [a for a in alarms(tmp_path, "breaker_mismatch",
                                                         "breaker:401") if not a["active"]])
        assert cleared
    finally:
        code = await daemon.stop(signal.SIGTERM)
        await line.stop()
    output = daemon.output.decode()
    assert code == 0, output[-3000:]
    reloaded = [json.loads(line) for line in output.splitlines()
                if '"config_reloaded"' in line]
    assert reloaded and reloaded[0]["rooms"]["changed"] == 1, output[-3000:]
    # Neither password is ever in the journal.
    assert "123456" not in output and "654321" not in output
