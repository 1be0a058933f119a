#!/usr/bin/env python3
"""Write examples/logins.jsonl: sample SQS message bodies (one per line) for local runs of the engine.

Deterministic (fixed seed); standard library only. Prints the counts it wrote.
Usage: python3 scripts/gen_examples.py [OUTPUT]
"""
import json
import random
import sys
import uuid
from pathlib import Path

SEED = 20240517
N_VALID = 130
N_WRONG_SHAPE = 10
N_BAD_JSON = 5
N_MISSING_USER_ID = 5

VERSIONS = ["0.96", "2.00", "9.10", "2.3.0", "10.2.1", "3", "2.3.4", "5.1.0"]
LOCALES = ["RU", "US", "IN", "BR", "DE", "FR", "JP", "GB"]
DEVICE_TYPES = ["android", "ios"]
HOT_IP = "199.172.111.135"          # shared by many messages: duplicate masking must be visible
HOT_DEVICE_ID = "593-47-5928"


def make_uuid(rng):
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def make_ip(rng):
    return "%d.%d.%d.%d" % (rng.randint(1, 223), rng.randint(0, 255), rng.randint(0, 255), rng.randint(1, 254))


def make_device_id(rng):
    return "%03d-%02d-%04d" % (rng.randint(0, 999), rng.randint(0, 99), rng.randint(0, 9999))


def login(rng, ip_pool, device_pool, i):
    # Every 10th message uses the hot IP (13 of 130), every 20th the hot device id; the rest draw
    # from small pools so other repeats appear as well.
    ip = HOT_IP if i % 10 == 0 else rng.choice(ip_pool)
    device_id = HOT_DEVICE_ID if i % 20 == 0 else rng.choice(device_pool)
    locale = None if i % 13 == 5 else rng.choice(LOCALES)
    return {
        "user_id": make_uuid(rng),
        "app_version": VERSIONS[i % len(VERSIONS)],
        "device_type": DEVICE_TYPES[rng.randrange(2)],
        "ip": ip,
        "locale": locale,
        "device_id": device_id,
    }


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "examples" / "logins.jsonl"
    rng = random.Random(SEED)
    ip_pool = [make_ip(rng) for _ in range(60)]
    device_pool = [make_device_id(rng) for _ in range(80)]

    lines = []  # (kind, line)
    for i in range(N_VALID):
        lines.append(("valid", json.dumps(login(rng, ip_pool, device_pool, i))))
    for i in range(N_WRONG_SHAPE):
        lines.append(("wrong_shape", json.dumps({"foo": "oops_wrong_msg_type", "bar": str(123 + 111 * i)})))
    bad_json = [
        '{"user_id": "abc", "ip": ',
        "not json at all",
        '{"user_id": "%s", "app_version": "2.3.0", "device_type": "ios"' % make_uuid(rng),
        '{"user_id": "%s", "ip": "10.0.0.1", locale: RU}' % make_uuid(rng),
        "[1, 2, ",
    ]
    assert len(bad_json) == N_BAD_JSON
    lines += [("invalid_json", b) for b in bad_json]
    for i in range(N_MISSING_USER_ID):
        msg = login(rng, ip_pool, device_pool, N_VALID + i + 1)
        del msg["user_id"]
        lines.append(("missing_user_id", json.dumps(msg)))
    rng.shuffle(lines)

    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8", newline="\n") as f:
        for _, line in lines:
            assert "\n" not in line
            f.write(line + "\n")

    counts = {}
    for kind, _ in lines:
        counts[kind] = counts.get(kind, 0) + 1
    valid = counts.get("valid", 0)
    hot = sum(1 for kind, line in lines if kind == "valid" and HOT_IP in line)
    print("wrote %s: %d lines" % (out, len(lines)))
    print("  valid login events:        %d (%d share ip %s)" % (valid, hot, HOT_IP))
    print("  invalid, total:            %d" % (len(lines) - valid))
    print("    wrong shape (foo/bar):   %d" % counts.get("wrong_shape", 0))
    print("    not valid JSON:          %d" % counts.get("invalid_json", 0))
    print("    missing user_id:         %d" % counts.get("missing_user_id", 0))


if __name__ == "__main__":
    main()
