#!/usr/bin/env python3
"""The usual way to move login events from SQS into Postgres, as a yardstick for the engine.

One thread; boto3 receives 10 messages at a time; each message is parsed and transformed on its
own (hashlib HMAC-SHA-256 masking, version to integer, SentTimestamp to date), written with one
psycopg2 INSERT and its own commit, then deleted with one DeleteMessage call. No vault, no ledger,
no batching: this is the script the engine replaces, not a straw man of it, so it is kept simple
and correct (an invalid message is counted and deleted, not retried forever).

Usage: reference_etl.py --endpoint URL --queue-url URL --db DSN [--table user_logins]
Prints one JSON line with what it did. Stops after two empty receives in a row (like
`etl-engine run --drain`).
"""
import argparse
import datetime
import hashlib
import hmac
import json
import os
import sys
import time

import boto3
import psycopg2


def version_to_int(v):
    """'2.3.0' -> 2003000, like the engine's version_to_int; ValueError when it cannot."""
    parts = str(v).strip().lstrip("vV").split(".")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise ValueError("not a version")
    nums = [int(p) for p in parts] + [0] * (3 - len(parts))
    if nums[1] > 999 or nums[2] > 999 or nums[0] > 2146:
        raise ValueError("version out of range")
    return nums[0] * 1_000_000 + nums[1] * 1_000 + nums[2]


def transform(msg, key):
    body = json.loads(msg["Body"])
    if not isinstance(body, dict) or body.get("user_id") is None:
        raise ValueError("not a login event")

    def mask(v):
        return None if v is None else hmac.new(key, str(v).encode(), hashlib.sha256).hexdigest()

    sent = int(msg["Attributes"]["SentTimestamp"])
    device_type = body.get("device_type")
    return (
        body["user_id"],
        device_type.lower() if isinstance(device_type, str) else device_type,
        mask(body.get("ip")),
        mask(body.get("device_id")),
        body.get("locale"),
        version_to_int(body.get("app_version")),
        datetime.datetime.fromtimestamp(sent / 1000, tz=datetime.timezone.utc).date(),
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--queue-url", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--table", default="user_logins")
    args = ap.parse_args()

    # A fresh key per run: the masking costs the same as with a managed key.
    key = os.urandom(32)
    sqs = boto3.client("sqs", endpoint_url=args.endpoint, region_name="us-east-1",
                       aws_access_key_id="test", aws_secret_access_key="test")
    conn = psycopg2.connect(args.db)
    cur = conn.cursor()
    insert = (f"INSERT INTO {args.table} (user_id, device_type, masked_ip, masked_device_id, locale, app_version, create_date) "
              "VALUES (%s, %s, %s, %s, %s, %s, %s)")

    started = time.monotonic()
    received = rows = invalid = empty = 0
    while empty < 2:
        resp = sqs.receive_message(QueueUrl=args.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                   AttributeNames=["SentTimestamp"])
        msgs = resp.get("Messages", [])
        if not msgs:
            empty += 1
            continue
        empty = 0
        for msg in msgs:
            received += 1
            try:
                row = transform(msg, key)
            except (ValueError, KeyError, TypeError):
                invalid += 1
                row = None
            if row is not None:
                try:
                    cur.execute(insert, row)
                    conn.commit()
                    rows += 1
                except psycopg2.DataError:
                    conn.rollback()
                    invalid += 1
            sqs.delete_message(QueueUrl=args.queue_url, ReceiptHandle=msg["ReceiptHandle"])
    secs = time.monotonic() - started
    print(json.dumps({"received": received, "rows": rows, "invalid": invalid, "secs": round(secs, 3),
                      "messages_per_sec": round(received / secs) if secs else None}))
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
