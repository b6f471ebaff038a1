"""The database's schema: its tables, their migrations, and how they are applied.

Contract:
- The schema is versioned with `PRAGMA user_version`: `MIGRATIONS[i]` takes a
  database from version i to i + 1, each in its own transaction, and
  `SCHEMA_VERSION` is the version this gatewayd writes. A shipped entry is
  never edited: a change of schema is a new entry.
- A database from a newer gatewayd is refused with a message that says what
  to do, and left unchanged.
- The `class` column of `events` holds the delivery classes of the contract
  (`CLASS_*`, center-link.md "Delivery").
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import structlog

from gatewayd.contract.enums import Priority
from gatewayd.errors import StoreError

log = structlog.get_logger(__name__)

# Each entry migrates from version i to i + 1. Never edit a shipped entry: add one.
MIGRATIONS: list[str] = [
    # 1: the first schema.
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    -- The center owns balances; this is the gateway's mirror (behaviour.md).
    CREATE TABLE accounts (
        account TEXT PRIMARY KEY,
        balance_fen INTEGER NOT NULL DEFAULT 0,
        known INTEGER NOT NULL DEFAULT 0,      -- credited or synced by the center
        updated REAL NOT NULL
    );
    CREATE TABLE cards (
        uid TEXT PRIMARY KEY,                  -- upper-case hex
        account TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        expires TEXT,                          -- RFC 3339 date or NULL
        updated REAL NOT NULL
    );
    -- The event log and outbox: seq is assigned in the ledger's transaction.
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        type TEXT NOT NULL,
        class INTEGER NOT NULL,                -- delivery class, lower first
        wall REAL NOT NULL,                    -- epoch seconds, for keep_events_days
        payload BLOB NOT NULL,                 -- the complete JSON message
        published REAL                         -- when the broker acknowledged it
    );
    CREATE INDEX events_pending ON events (class, seq) WHERE published IS NULL;
    CREATE INDEX events_wall ON events (wall);
    -- Commands seen, with their first result (duplicates are answered, not applied).
    CREATE TABLE commands (
        id TEXT PRIMARY KEY,
        received REAL NOT NULL,
        result BLOB NOT NULL,
        published REAL
    );
    CREATE INDEX commands_received ON commands (received);
    -- Water sessions still open: recovered and charged after a crash.
    CREATE TABLE water_sessions (
        point TEXT PRIMARY KEY,
        session TEXT NOT NULL,
        card TEXT NOT NULL,
        account TEXT NOT NULL,
        service TEXT NOT NULL,
        offline INTEGER NOT NULL,
        started REAL NOT NULL,                 -- epoch seconds
        elapsed_s REAL NOT NULL DEFAULT 0,     -- monotonic time accounted so far
        counter_start INTEGER,                 -- pulse count at open, NULL without a flow meter
        counter_last INTEGER,
        volume_ml INTEGER NOT NULL DEFAULT 0,
        charged_fen INTEGER NOT NULL DEFAULT 0,
        carry TEXT NOT NULL DEFAULT '0'        -- fraction of a fen carried (decimal)
    );
    -- Per-room state that must survive restarts.
    CREATE TABLE rooms (
        room TEXT PRIMARY KEY,
        baseline_wh INTEGER,                   -- last charged meter reading
        baseline_wall REAL,                    -- epoch seconds of that reading
        carry TEXT NOT NULL DEFAULT '0',       -- fraction of a fen carried (decimal)
        accrued_wh INTEGER NOT NULL DEFAULT 0, -- charged, not yet reported
        accrued_fen INTEGER NOT NULL DEFAULT 0,
        chain_from_wh INTEGER,                 -- meter_wh_from of the next power.usage
        accrued_since REAL,                    -- epoch seconds of the first unreported charge
        low_sent INTEGER NOT NULL DEFAULT 0,   -- balance.low sent for this crossing
        hold INTEGER NOT NULL DEFAULT 0,       -- room.cut with hold
        cut_reason TEXT,                       -- why the gateway has it cut, NULL if not
        trip_reason TEXT,                      -- overload/resistive/remote trip waiting to reclose
        reclose_at REAL,                       -- epoch seconds
        lockout_until REAL,                    -- epoch seconds
        trips TEXT NOT NULL DEFAULT '[]',      -- epoch seconds of recent trips (JSON)
        max_power_w INTEGER                    -- room.limit override
    );
    -- Water spent per card per day while the center is unreachable.
    CREATE TABLE offline_spend (
        card TEXT NOT NULL,
        day TEXT NOT NULL,
        fen INTEGER NOT NULL,
        PRIMARY KEY (card, day)
    );
    """,
    # 2: pulses counted by an open water session, so that a recovered session
    # charges the flow after its last progress from the right volume.
    """
    ALTER TABLE water_sessions ADD COLUMN pulses INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: the center link's outbox (gatewayd/store/outbox.py): telemetry queued while
    # offline, and exact per-class counts and bytes of what is unpublished,
    # kept by triggers so that the cap and the status `pending` cost one row
    # read instead of a scan of the backlog.
    """
    CREATE TABLE telemetry (
        id INTEGER PRIMARY KEY,
        wall REAL NOT NULL,                    -- epoch seconds when it was taken
        payload BLOB NOT NULL                  -- the complete JSON message
    );
    CREATE TABLE outbox_pending (
        class INTEGER PRIMARY KEY,             -- delivery class, as events.class
        count INTEGER NOT NULL,
        bytes INTEGER NOT NULL                 -- payload bytes
    );
    INSERT INTO outbox_pending (class, count, bytes) VALUES (0, 0, 0), (1, 0, 0), (2, 0, 0), (3, 0, 0);
    UPDATE outbox_pending SET
        count = (SELECT COUNT(*) FROM commands WHERE published IS NULL),
        bytes = (SELECT COALESCE(SUM(length(result)), 0) FROM commands WHERE published IS NULL)
        WHERE class = 0;
    UPDATE outbox_pending SET
        count = (SELECT COUNT(*) FROM events WHERE published IS NULL AND class = outbox_pending.class),
        bytes = (SELECT COALESCE(SUM(length(payload)), 0) FROM events
                 WHERE published IS NULL AND class = outbox_pending.class)
        WHERE class IN (1, 2);
    CREATE INDEX commands_pending ON commands (received) WHERE published IS NULL;
    CREATE TRIGGER events_outbox_insert AFTER INSERT ON events WHEN new.published IS NULL
    BEGIN
        UPDATE outbox_pending SET count = count + 1, bytes = bytes + length(new.payload)
            WHERE class = new.class;
    END;
    CREATE TRIGGER events_outbox_update AFTER UPDATE OF published, class, payload ON events
    BEGIN
        UPDATE outbox_pending SET count = count - 1, bytes = bytes - length(old.payload)
            WHERE class = old.class AND old.published IS NULL;
        UPDATE outbox_pending SET count = count + 1, bytes = bytes + length(new.payload)
            WHERE class = new.class AND new.published IS NULL;
    END;
    CREATE TRIGGER events_outbox_delete AFTER DELETE ON events WHEN old.published IS NULL
    BEGIN
        UPDATE outbox_pending SET count = count - 1, bytes = bytes - length(old.payload)
            WHERE class = old.class;
    END;
    CREATE TRIGGER commands_outbox_insert AFTER INSERT ON commands WHEN new.published IS NULL
    BEGIN
        UPDATE outbox_pending SET count = count + 1, bytes = bytes + length(new.result) WHERE class = 0;
    END;
    CREATE TRIGGER commands_outbox_update AFTER UPDATE OF published, result ON commands
    BEGIN
        UPDATE outbox_pending SET count = count - 1, bytes = bytes - length(old.result)
            WHERE class = 0 AND old.published IS NULL;
        UPDATE outbox_pending SET count = count + 1, bytes = bytes + length(new.result)
            WHERE class = 0 AND new.published IS NULL;
    END;
    CREATE TRIGGER commands_outbox_delete AFTER DELETE ON commands WHEN old.published IS NULL
    BEGIN
        UPDATE outbox_pending SET count = count - 1, bytes = bytes - length(old.result) WHERE class = 0;
    END;
    CREATE TRIGGER telemetry_outbox_insert AFTER INSERT ON telemetry
    BEGIN
        UPDATE outbox_pending SET count = count + 1, bytes = bytes + length(new.payload) WHERE class = 3;
    END;
    CREATE TRIGGER telemetry_outbox_delete AFTER DELETE ON telemetry
    BEGIN
        UPDATE outbox_pending SET count = count - 1, bytes = bytes - length(old.payload) WHERE class = 3;
    END;
    """,
    # 4: a breaker decision committed but not yet carried out (a crash between
    # the commit and the coil write): finished at the next start, not mistaken
    # for a breaker switched by hand.
    """
    ALTER TABLE rooms ADD COLUMN switch_pending INTEGER NOT NULL DEFAULT 0;
    """,
    # 5: the lasting alarms on record as raised (their last event says active),
    # kept by a trigger on the event log, so that a restart can clear what it no
    # longer sees instead of leaving the center with an alarm for ever.
    """
    CREATE TABLE alarms_active (
        code TEXT NOT NULL,
        device TEXT NOT NULL,
        detail TEXT NOT NULL,
        since TEXT NOT NULL,                   -- the raising event's ts
        PRIMARY KEY (code, device)
    );
    INSERT INTO alarms_active (code, device, detail, since)
    SELECT code, device, COALESCE(detail, ''), ts FROM (
        SELECT json_extract(payload, '$.code') AS code, json_extract(payload, '$.device') AS device,
               json_extract(payload, '$.detail') AS detail, json_extract(payload, '$.ts') AS ts,
               json_extract(payload, '$.active') AS active,
               ROW_NUMBER() OVER (PARTITION BY json_extract(payload, '$.code'),
                                  json_extract(payload, '$.device') ORDER BY seq DESC) AS latest
        FROM events WHERE type = 'alarm'
    ) WHERE latest = 1 AND active AND code NOT IN ('meter_reset', 'meter_jump');
    CREATE TRIGGER events_alarm_state AFTER INSERT ON events
    WHEN new.type = 'alarm' AND json_extract(new.payload, '$.code') NOT IN ('meter_reset', 'meter_jump')
    BEGIN
        DELETE FROM alarms_active WHERE code = json_extract(new.payload, '$.code')
            AND device = json_extract(new.payload, '$.device');
        INSERT INTO alarms_active (code, device, detail, since)
            SELECT json_extract(new.payload, '$.code'), json_extract(new.payload, '$.device'),
                   COALESCE(json_extract(new.payload, '$.detail'), ''), json_extract(new.payload, '$.ts')
            WHERE json_extract(new.payload, '$.active');
    END;
    """,
    # 6: when each remembered command's validity ends (epoch seconds; NULL for
    # rows from before, whose validity was max_command_age_s): its id is kept
    # until then at least, so that a command with `expires` cannot be applied
    # twice (center-link.md "Signing").
    """
    ALTER TABLE commands ADD COLUMN valid_until REAL;
    """,
    # 7: the store's identity (center-link.md "Status", `store_id`): a random
    # UUID (version 4) made once, with the store or by this migration, and kept;
    # the center keys its seq bookkeeping on it.
    """
    INSERT OR IGNORE INTO meta (key, value)
    SELECT 'store_id', lower(substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-4' || substr(h, 14, 3)
                             || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || substr(h, 18, 3)
                             || '-' || substr(h, 21, 12))
    FROM (SELECT hex(randomblob(16)) AS h);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)

# Delivery classes (center-link.md "Delivery"), as the `class` column holds them.
CLASS_RESULT = int(Priority.RESULT)
CLASS_MONEY = int(Priority.MONEY)
CLASS_EVENT = int(Priority.EVENT)
CLASS_TELEMETRY = int(Priority.TELEMETRY)


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the database open on `conn` (the file at `path`) to SCHEMA_VERSION. Raises StoreError."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema version {version}, written by a newer gatewayd "
            f"(this one knows up to {SCHEMA_VERSION}). Install that newer version again, "
            "or restore a backup made by this version; the database was not changed."
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        log.info("store_migrating", path=str(path), to_version=target)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(MIGRATIONS[target - 1]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (sqlite3 runs one per execute)."""
    out: list[str] = []
    current: list[str] = []
    for line in script.splitlines():
        stripped = line.split("--", 1)[0].rstrip()
        if not stripped.strip():
            continue
        current.append(stripped)
        if stripped.endswith(";"):
            stmt = "\n".join(current).strip()
            if sqlite3.complete_statement(stmt):
                out.append(stmt)
                current = []
    if current:
        out.append("\n".join(current))
    return out
