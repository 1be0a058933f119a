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

To add a spec, write one class like ``Logins`` (or ``Orders``, two tables upserted by key) and
list it in ``SPECS``.
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


class Orders:
    """specs/orders.yaml: one row per order in `orders`, one per item in `order_items`, both
    upserted by key with only_if_newer placed_at. Besides new orders, the messages re-send earlier
    orders unchanged (a producer retry: a new message id, the same order) and send older
    versions of earlier orders (an earlier placed_at, other items and total), which must change
    nothing whatever order they arrive in. An older version never has more items than the
    order it trails, so the newest version's items are exactly what `order_items` must hold."""

    spec = "specs/orders.yaml"
    ddl = ["schema/orders.sql"]
    queue_prefix = "fault-orders"
    INVALID = ["bad_json", "null_key", "too_long", "bad_qty", "no_placed_at"]

    @staticmethod
    def _order(oid, i, rng, n_items, placed_at):
        items = [{"sku": f"SKU-{rng.randrange(1000):03d}", "qty": rng.randrange(1, 9),
                  "price_cents": rng.randrange(50, 20000)} for _ in range(n_items)]
        return {"order_id": oid,
                "customer": {"email": f"user{i % 5000}@example.com", "phone": f"+1 (555) {i % 1000:03d}-{i % 10000:04d}",
                             "address": {"street": f"{i % 900 + 1} Main St", "zip": f"{i % 100000:05d}"}},
                "items": items, "total_cents": sum(x["qty"] * x["price_cents"] for x in items),
                "placed_at": placed_at}

    def make_messages(self, n, invalid, rng, tag):
        bad = set(rng.sample(range(n), invalid))
        bodies, kinds = [], []
        originals = []  # (order, index) of valid new orders, for re-sends and older versions
        n_bad = 0
        for i in range(n):
            oid = f"{tag}-{i:07d}"
            # 2024-01-01 plus i minutes: each new order has its own placed_at.
            placed = f"2024-{1 + (i // 40000) % 12:02d}-{1 + (i // 1440) % 28:02d}T{(i // 60) % 24:02d}:{i % 60:02d}:30Z"
            if i in bad:
                kind = self.INVALID[n_bad % len(self.INVALID)]
                n_bad += 1
                msg = self._order(oid, i, rng, rng.randrange(1, 5), placed)
                if kind == "bad_json":
                    bodies.append(json.dumps(msg)[:-9])
                    kinds.append(kind)
                    continue
                if kind == "null_key":
                    msg["order_id"] = None
                elif kind == "too_long":
                    # Passes the spec; Postgres refuses it (sku varchar(64)): isolated by splitting.
                    msg["items"][-1]["sku"] = "X" * 80
                elif kind == "bad_qty":
                    msg["items"][0]["qty"] = "two"
                elif kind == "no_placed_at":
                    del msg["placed_at"]
                bodies.append(json.dumps(msg))
                kinds.append(kind)
                continue
            roll = rng.random()
            if originals and roll < 0.1:
                # A producer retry: the same order, sent again.
                bodies.append(json.dumps(rng.choice(originals)))
            elif originals and roll < 0.2:
                # An older version: earlier placed_at, other items (never more), another total.
                orig = rng.choice(originals)
                old = self._order(orig["order_id"], i, rng, rng.randrange(1, len(orig["items"]) + 1),
                                  "2023-06-01T00:00:00Z")
                bodies.append(json.dumps(old))
            else:
                msg = self._order(oid, i, rng, rng.randrange(1, 5), placed)
                originals.append(msg)
                bodies.append(json.dumps(msg))
            kinds.append("valid")
        return bodies, kinds

    def verify(self, pg, bodies, kinds):
        newest = {}
        for b, k in zip(bodies, kinds):
            if k != "valid":
                continue
            o = json.loads(b)
            cur = newest.get(o["order_id"])
            if cur is None or cur["placed_at"] <= o["placed_at"]:
                newest[o["order_id"]] = o
        want_orders = {oid: f"{o['total_cents'] // 100}.{o['total_cents'] % 100:02d}" for oid, o in newest.items()}
        want_items = {(oid, line + 1, it["sku"], it["qty"])
                      for oid, o in newest.items() for line, it in enumerate(o["items"])}
        rows = pg.scalar("SELECT count(*) FROM orders")
        distinct = pg.scalar("SELECT count(DISTINCT order_id) FROM orders")
        item_rows = pg.scalar("SELECT count(*) FROM order_items")
        item_distinct = pg.scalar("SELECT count(DISTINCT (order_id, line)) FROM order_items")
        got_orders = dict(line.split("|") for line in pg.column("SELECT order_id, total::text FROM orders"))
        got_items = set()
        for line in pg.column("SELECT order_id, line, sku, qty FROM order_items"):
            oid, ln, sku, qty = line.split("|")
            got_items.add((oid, int(ln), sku, int(qty)))
        # Lost: an order missing, or holding another version than the newest (its total or items).
        wrong = {oid for oid, t in want_orders.items() if got_orders.get(oid) != t}
        wrong |= {w[0] for w in want_items - got_items}
        unexpected = len(set(got_orders) - set(want_orders)) + len(got_items - want_items)
        return {"rows": rows + item_rows, "expected": len(want_orders) + len(want_items),
                "duplicates": (rows - distinct) + (item_rows - item_distinct),
                "lost": len(wrong), "unexpected": unexpected}


SPECS = {"logins": Logins, "orders": Orders}
