"""What scripts/fault_test.py needs to know about each spec it can run under faults.

The run itself (queue, engines, faults, ledger, rejects, queue depth) is the same for every spec;
a spec contributes only:

- ``spec``: the shipped spec file (relative to the project), run unchanged except for the
  settings fault_test.py overrides through ``ETL_SPEC_*`` variables (queue, endpoint, database,
  timeouts);
- ``ddl``: the target tables' DDL files, applied to the run's fresh database;
- ``queue_prefix``: the start of the run's queue name;
- ``make_messages(n, invalid, rng, tag)``: N bodies, of which ``invalid`` cannot become rows, and
  for each its kind ("valid" or why it is invalid);
- ``verify(pg, bodies, kinds)``: reads the target tables and returns the counts fault_test.py
  prints: rows written, rows expected, duplicated, lost (valid messages with no effect),
  unexpected (rows no message asked for).

To add a spec, write one class like ``Logins`` and list it in ``SPECS``.
"""
import json

# Kinds of invalid message every generator may use; the rejects check only needs "not valid".
INVALID_KINDS = ["bad_json", "wrong_shape", "null_key", "too_long", "bad_version"]


class Logins:
    """specs/logins.yaml: one row per message in user_logins, the user id is unique per message."""

    spec = "specs/logins.yaml"
    ddl = ["schema/user_logins.sql"]
    queue_prefix = "fault-logins"

    def make_messages(self, n, invalid, rng, tag):
        bad = set(rng.sample(range(n), invalid))
        bodies, kinds = [], []
        n_bad = 0
        for i in range(n):
            msg = {"user_id": f"{tag}-{i:07d}", "app_version": f"{i % 5}.{i % 100}.{i % 7}",
                   "device_type": ["android", "ios"][i % 2],
                   "ip": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "locale": [None, "RU", "US", "DE"][i % 4],
                   "device_id": f"{i % 1000:03d}-{i % 100:02d}-{i % 10000:04d}"}
            kind = "valid"
            if i in bad:
                kind = INVALID_KINDS[n_bad % len(INVALID_KINDS)]
                n_bad += 1
                if kind == "bad_json":
                    bodies.append(json.dumps(msg)[:-7])
                    kinds.append(kind)
                    continue
                if kind == "wrong_shape":
                    msg = {"foo": "oops_wrong_msg_type", "bar": str(i)}
                elif kind == "null_key":
                    msg["user_id"] = None
                elif kind == "too_long":
                    # Passes the spec; Postgres refuses it (varchar(32)): isolated by splitting the batch.
                    msg["device_type"] = "x" * 40
                elif kind == "bad_version":
                    msg["app_version"] = "v2.beta"
            bodies.append(json.dumps(msg))
            kinds.append(kind)
        return bodies, kinds

    def verify(self, pg, bodies, kinds):
        valid = {json.loads(b)["user_id"] for b, k in zip(bodies, kinds) if k == "valid"}
        rows = pg.scalar("SELECT count(*) FROM user_logins")
        distinct = pg.scalar("SELECT count(DISTINCT user_id) FROM user_logins")
        got = set(pg.column("SELECT DISTINCT user_id FROM user_logins WHERE user_id IS NOT NULL"))
        return {"rows": rows, "expected": len(valid), "duplicates": rows - distinct,
                "lost": len(valid - got), "unexpected": len(got - valid)}


SPECS = {"logins": Logins}
