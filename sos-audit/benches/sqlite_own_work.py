#!/usr/bin/env python3
"""SQLite's own work for an audited write, without sqlx: the host's UPDATE alone against the
same UPDATE with sos-audit's head move and entry insert (schema and triggers from
migrations/sqlite), in one BEGIN IMMEDIATE ... COMMIT each, WAL, synchronous = NORMAL.
Alternating short windows, so that load drift hits both sides alike; prints the ratio.

Then counts the WAL pages one append writes (deterministic, unlike the rates): before the
clustered table and the append view (migrations up to 0100000010, BEGIN IMMEDIATE, head UPDATE,
INSERT, COMMIT), as shipped (one INSERT into the view audit_appends), and a plain INSERT of the
same row into an ordinary table with the same primary key.

Run: python3 sos-audit/benches/sqlite_own_work.py
"""
import glob
import hashlib
import os
import sqlite3
import tempfile
import time

MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "migrations", "sqlite")


def database(directory, drop_triggers, up_to=None):
    conn = sqlite3.connect(os.path.join(directory, "t.sqlite"), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    for path in sorted(glob.glob(os.path.join(MIGRATIONS, "*.sql"))):
        if up_to is not None and int(os.path.basename(path)[:10]) > up_to:
            continue
        with open(path) as migration:
            conn.executescript(migration.read())
    if drop_triggers:
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            if name.startswith(drop_triggers):
                conn.execute(f"DROP TRIGGER {name}")
    conn.execute("CREATE TABLE deals (tenant TEXT NOT NULL, id INTEGER NOT NULL, stage INTEGER NOT NULL,"
                 " PRIMARY KEY (tenant, id))")
    conn.execute("INSERT INTO deals VALUES ('acme', 1, 0)")
    conn.execute("INSERT INTO audit_heads VALUES ('acme', 0, zeroblob(32))")
    return conn


def measure(label, drop_triggers=None, move_head=True):
    with tempfile.TemporaryDirectory() as directory:
        conn = database(directory, drop_triggers)
        head = [0, bytes(32)]

        def floor():
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE deals SET stage = stage + 1 WHERE tenant = ? AND id = 1", ("acme",))
            conn.execute("COMMIT")

        def audited():
            seq, prev = head[0] + 1, head[1]
            digest = hashlib.sha256(seq.to_bytes(8, "big") + prev).digest()
            conn.execute("BEGIN IMMEDIATE")
            if move_head:
                conn.execute("UPDATE audit_heads SET seq = ?2, hash = ?4 WHERE tenant = ?1 AND seq = ?2 - 1"
                             " AND hash = ?3", ("acme", seq, prev, digest))
            conn.execute("INSERT INTO audit_entries (tenant, seq, time_us, actor, action, subject, payload,"
                         " prev_hash, hash) VALUES (?1, ?2, ?5, ?6, ?7, ?8, ?9, ?3, ?4)",
                         ("acme", seq, prev, digest, 1_700_000_000_000_000 + seq, "agent:closer", "deal.stage",
                          f"deal/{seq}", f'{{"amount_cents":125000,"index":{seq},"stage":"qualified"}}'))
            conn.execute("UPDATE deals SET stage = stage + 1 WHERE tenant = ? AND id = 1", ("acme",))
            conn.execute("COMMIT")
            head[0], head[1] = seq, digest

        rates = {"floor": 0.0, "audited": 0.0}
        rounds = 5
        for _ in range(rounds):
            for name, once in (("floor", floor), ("audited", audited)):
                start, done = time.perf_counter(), 0
                while time.perf_counter() - start < 0.6:
                    once()
                    done += 1
                rates[name] += done / (time.perf_counter() - start) / rounds
        conn.close()
    print(f"{label}: UPDATE alone {rates['floor']:.0f} tx/s, with the audit entry {rates['audited']:.0f} tx/s"
          f" -> {rates['audited'] / rates['floor']:.2f}")


measure("schema as shipped")
measure("without the audit_entries triggers", drop_triggers="audit_entries_")
measure("without any trigger and without the head move", drop_triggers="audit_", move_head=False)


def wal_pages(label, up_to, through_view, appends=2000):
    with tempfile.TemporaryDirectory() as directory:
        conn = database(directory, None, up_to)
        conn.execute("CREATE TABLE plain_rows (tenant TEXT NOT NULL, seq INTEGER NOT NULL, time_us INTEGER NOT NULL,"
                     " actor TEXT NOT NULL, action TEXT NOT NULL, subject TEXT NOT NULL, payload TEXT NOT NULL,"
                     " prev_hash BLOB NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (tenant, seq))")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        wal = os.path.join(directory, "t.sqlite-wal")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]

        def pages():
            size = os.path.getsize(wal) if os.path.exists(wal) else 0
            return (size - 32) / (page_size + 24) if size else 0

        columns = "(tenant, seq, time_us, actor, action, subject, payload, prev_hash, hash)"
        values = "VALUES (?1, ?2, ?5, ?6, ?7, ?8, ?9, ?3, ?4)"
        prev, start = bytes(32), pages()
        for seq in range(1, appends + 1):
            digest = hashlib.sha256(seq.to_bytes(8, "big") + prev).digest()
            row = ("acme", seq, prev, digest, 1_700_000_000_000_000 + seq, "agent:closer", "deal.stage",
                   f"deal/{seq}", f'{{"amount_cents":125000,"index":{seq},"stage":"qualified"}}')
            if through_view:
                conn.execute(f"INSERT INTO audit_appends {columns} {values}", row)
            else:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("UPDATE audit_heads SET seq = ?2, hash = ?4 WHERE tenant = ?1 AND seq = ?2 - 1"
                             " AND hash = ?3", row[:4])
                conn.execute(f"INSERT INTO audit_entries {columns} {values}", row)
                conn.execute("COMMIT")
            prev = digest
        middle = pages()
        for seq in range(1, appends + 1):
            conn.execute(f"INSERT INTO plain_rows {columns} {values}",
                         ("acme", seq, bytes(32), bytes(32), 1_700_000_000_000_000 + seq, "agent:closer",
                          "deal.stage", f"deal/{seq}", f'{{"amount_cents":125000,"index":{seq},"stage":"qualified"}}'))
        end = pages()
        conn.close()
    print(f"{label}: {(middle - start) / appends:.2f} WAL pages per append,"
          f" plain INSERT of the same row {(end - middle) / appends:.2f}")


wal_pages("before 0100000011 (rowid table, two statements)", 100000010, through_view=False)
wal_pages("as shipped (WITHOUT ROWID, one INSERT into audit_appends)", None, through_view=True)
