#!/usr/bin/env python3
# Steady producer for scripts/soak.sh: sends login messages (unique user ids) to one queue at a
# fixed rate, in batches of 10, until SIGTERM; then writes how many it sent to --count-file.
# Keeps to the rate over the whole run (it catches up after a slow call) but never bursts more
# than one second's worth. Uses boto3 from the LocalStack virtualenv.
import argparse
import json
import signal
import sys
import time

import boto3
from botocore.config import Config

stop = False


def on_term(_sig, _frame):
    global stop
    stop = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--queue-url", required=True)
    ap.add_argument("--rate", type=float, required=True, help="messages per second")
    ap.add_argument("--tag", required=True, help="prefix of the user ids")
    ap.add_argument("--count-file", required=True)
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, on_term)
    sqs = boto3.client("sqs", endpoint_url=a.endpoint, region_name="us-east-1",
                       aws_access_key_id="test", aws_secret_access_key="test",
                       config=Config(retries={"max_attempts": 10, "mode": "standard"}))
    sent = 0
    start = time.monotonic()
    while not stop:
        due = int((time.monotonic() - start) * a.rate)
        # Behind by more than a second (e.g. the queue was slow): skip ahead, do not burst.
        if due - sent > a.rate:
            start = time.monotonic() - sent / a.rate
            due = sent
        if due - sent < 10:
            time.sleep(0.01)
            continue
        entries = []
        for j in range(10):
            i = sent + j
            body = {"user_id": f"{a.tag}-{i:09d}", "app_version": f"{i % 5}.{i % 100}.{i % 7}",
                    "device_type": ["android", "ios"][i % 2], "ip": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                    "locale": [None, "RU", "US", "DE"][i % 4], "device_id": f"{i % 1000:03d}-{i % 100:02d}-{i % 10000:04d}"}
            entries.append({"Id": str(j), "MessageBody": json.dumps(body)})
        # Resend only the entries that failed: a resent success would be a second message.
        while entries and not stop:
            try:
                out = sqs.send_message_batch(QueueUrl=a.queue_url, Entries=entries)
            except Exception as e:  # noqa: BLE001 - a soak keeps going; the final row check counts
                print(f"soak producer: send failed: {e}", file=sys.stderr, flush=True)
                time.sleep(1)
                continue
            failed = {f["Id"] for f in out.get("Failed", [])}
            entries = [e for e in entries if e["Id"] in failed]
            if entries:
                time.sleep(0.2)
        if entries:
            # Stopped while some of the batch were still unsent: count what went out.
            sent += 10 - len(entries)
            break
        sent += 10
    with open(a.count_file, "w") as f:
        f.write(f"{sent}\n")


if __name__ == "__main__":
    main()
