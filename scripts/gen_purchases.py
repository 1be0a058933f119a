#!/usr/bin/env python3
# Writes examples/purchases.jsonl: 50 purchase events for specs/purchases.yaml (fixed seed, so
# re-running gives the same file). Nested customer/payment objects, an items array, gifts,
# coupons, card and PayPal payments, and 9 messages that must not become rows.
import json
import random
from pathlib import Path

rng = random.Random(20240501)
CUSTOMERS = [
    ("9f1c2d3e-0000-4000-8000-%012d" % i, email, street, city, postcode, country)
    for i, (email, street, city, postcode, country) in enumerate([
        ("Alice.Martin@Example.com", "12 Rue de la Paix", "Paris", "75002", "fr"),
        ("bob@example.org", "221B Baker Street", "London", "NW1 6XE", "GB"),
        ("chen.wei@example.net", "88 Nanjing Road", "Shanghai", "200001", "CN"),
        ("dora@example.com", "Calle Mayor 5", "Madrid", "28013", "es"),
        ("erik@example.se", "Drottninggatan 53", "Stockholm", "111 21", "SE"),
        ("fatima@example.ma", "10 Avenue Hassan II", "Rabat", "10000", "MA"),
        ("gus@example.com.br", "Rua Augusta 1500", "Sao Paulo", "01304-001", "br"),
    ])
]
SKUS = [("SKU-TEA-01", 1299), ("SKU-MUG-02", 899), ("SKU-PEN-03", 250), ("SKU-BAG-04", 4500), ("SKU-HAT-05", 1999)]
BRANDS = ["visa", "mastercard", "amex"]


def order(n):
    cid, email, street, city, postcode, country = rng.choice(CUSTOMERS)
    items = []
    for sku, price in rng.sample(SKUS, rng.choice([1, 1, 2, 3])):
        items.append({"sku": sku, "qty": rng.randint(1, 3), "unit_price_cents": price, "gift": rng.random() < 0.25})
    total = sum(i["qty"] * i["unit_price_cents"] for i in items)
    if rng.random() < 0.7:
        payment = {"method": "card", "card": {"brand": rng.choice(BRANDS), "last4": "%04d" % rng.randint(0, 9999)}}
    else:
        payment = {"method": "PayPal"}
    payment["amount_cents"] = total if rng.random() < 0.8 else str(total)
    payment["currency"] = rng.choice(["eur", "EUR", "gbp", "usd"])
    day, hour, minute = rng.randint(1, 28), rng.randint(0, 23), rng.randint(0, 59)
    offset = rng.choice(["Z", "+02:00", "-05:00"])
    msg = {
        "order_id": "ord-%05d" % n,
        "placed_at": "2024-05-%02dT%02d:%02d:00%s" % (day, hour, minute, offset),
        "customer": {
            "id": cid,
            "email": rng.choice([email, email.upper(), " %s " % email]),
            "address": {"street": street, "city": city, "postcode": postcode, "country": country},
        },
        "payment": payment,
        "items": items,
        "coupon": rng.choice([None, None, None, " spring10 ", "WELCOME"]),
    }
    if any(i["gift"] for i in items):
        msg["gift"] = True
    elif rng.random() < 0.5:
        msg["gift"] = False  # otherwise absent: the spec defaults it to false
    return msg


lines = []
for n in range(1, 42):
    lines.append(json.dumps(order(n)))

bad = []
m = order(42); del m["order_id"]; bad.append(json.dumps(m))                              # required order_id missing
m = order(43); m["placed_at"] = "yesterday"; bad.append(json.dumps(m))                   # not a timestamp
m = order(44); m["payment"]["amount_cents"] = "12.50"; bad.append(json.dumps(m))         # cents must be whole
m = order(45); del m["payment"]["amount_cents"]; bad.append(json.dumps(m))               # required amount missing
m = order(46); m["gift"] = "maybe"; bad.append(json.dumps(m))                            # not a boolean
bad.append(json.dumps(order(47))[:-20])                                                  # truncated JSON
bad.append("order_id=ord-00048&total=10")                                               # not JSON at all
bad.append(json.dumps({"user_id": "50b48946-833e-4605-bc1a-0771bc177442", "app_version": "2.3.0"}))  # a login event: wrong queue
m = order(49); m["customer"]["address"]["country"] = "France"; bad.append(json.dumps(m)) # transforms fine, too long for char(2): Postgres refuses it
lines.append(json.dumps(order(50)))

# Spread the invalid ones through the file.
for i, b in enumerate(bad):
    lines.insert(3 + i * 5, b)
Path(__file__).resolve().parent.parent.joinpath("examples/purchases.jsonl").write_text("\n".join(lines) + "\n")
print(f"wrote {len(lines)} messages ({len(lines) - len(bad)} valid, {len(bad)} invalid)")
