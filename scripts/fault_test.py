#!/usr/bin/env python3
# Fault-injection check of the engine's delivery guarantees, driven by scripts/fault-test.sh
# (which builds the release binary and starts PostgreSQL + LocalStack on their own ports).
#
# Loads N messages with unique ids (a known number invalid) into a fresh queue, runs P engine
# processes on it (no --drain, like a service), and while they work: SIGKILLs an engine at five
# (--kills) random moments (restarting it), stops PostgreSQL for 10 s, and restarts the LocalStack process
# once. Then it checks: rows = valid messages, none twice, no valid message missing,
# rejects = invalid messages (and only those), queue empty; prints one line and exits 0 on PASS.
#
# --spec NAME picks the shipped spec (specs/NAME.yaml), run as shipped except for what the
# ETL_SPEC_* variables below override; what differs per spec (tables, messages, the rows check)
# lives in scripts/fault_specs.py.
#
# LocalStack's community edition keeps queues in memory only (PERSISTENCE=1 is a Pro feature;
# localstack-core 4.13 ignores it), so a restart loses the queue and the messages still in it.
# Real SQS never does that. To keep the check meaningful, after stopping LocalStack this script
# waits until the engines have committed everything they hold (the ledger stops growing), starts
# LocalStack again, re-creates the queue and re-sends exactly the messages whose effect is not
# committed: what a durable queue would still deliver. Committed messages are not re-sent: with
# new SQS message ids the ledger could not recognise them (they would be duplicates by design of
# the test, not of the engine). The engines meanwhile see what a real outage looks like:
# connection refused, then receipt handles from before the restart that no longer work.
#
# Uses only the standard library and boto3 (from the LocalStack virtualenv); talks to
# PostgreSQL through psql.
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config

from fault_specs import SPECS


def log(msg):
    print(f"==> {msg}", file=sys.stderr, flush=True)


class Psql:
    """psql against one database; returns None instead of raising while the server is down."""

    def __init__(self, bin_dir, port, db):
        self.cmd = [os.path.join(bin_dir, "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                    "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", db]
        self.env = dict(os.environ, PGPASSWORD="postgres", PGCONNECT_TIMEOUT="3")

    def run(self, sql, check=True):
        p = subprocess.run(self.cmd + ["-c", sql], env=self.env, capture_output=True, text=True)
        if p.returncode != 0:
            if check:
                raise RuntimeError(f"psql failed: {sql[:80]}: {p.stderr.strip()}")
            return None
        return p.stdout

    def scalar(self, sql):
        out = self.run(sql, check=False)
        if out is None:
            return None
        try:
            return int(out.strip().splitlines()[0])
        except (ValueError, IndexError):
            return None

    def column(self, sql):
        return [line for line in self.run(sql).splitlines() if line]


class Engines:
    """Engine processes, restarted when they exit without being told to."""

    def __init__(self, binary, spec, keyring, log_dir, count, overrides):
        self.binary, self.spec, self.keyring, self.log_dir = binary, spec, keyring, log_dir
        self.overrides = overrides
        self.procs = [None] * count
        self.starts = [0] * count
        self.unexpected_exits = 0
        self.exit_logs = []

    def start(self, i):
        self.starts[i] += 1
        path = os.path.join(self.log_dir, f"engine-{i}-{self.starts[i]}.log")
        env = dict(os.environ, ETL_KEYRING=self.keyring, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                   RUST_LOG=os.environ.get("FAULT_RUST_LOG", "info,sqlx=warn"), **self.overrides)
        env.pop("ETL_KEYRING_JSON", None)
        with open(path, "w") as f:
            self.procs[i] = subprocess.Popen([self.binary, "run", self.spec], stdout=f, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env=env)
        self.procs[i].log_path = path

    def start_all(self):
        for i in range(len(self.procs)):
            self.start(i)

    def supervise(self):
        """Restarts engines that exited on their own (as a service manager would)."""
        for i, p in enumerate(self.procs):
            if p is not None and p.poll() is not None:
                self.unexpected_exits += 1
                self.exit_logs.append(p.log_path)
                log(f"engine {i} exited on its own with code {p.returncode} (log: {p.log_path}); restarting it")
                self.start(i)

    def kill(self, i):
        p = self.procs[i]
        p.send_signal(signal.SIGKILL)
        p.wait()
        self.start(i)

    def stop_all(self, timeout):
        """SIGTERM, as an orchestrator stops a service; returns the exit codes (None = had to be killed)."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = []
        deadline = time.time() + timeout
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=max(0.1, deadline - time.time())))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                codes.append(None)
        return codes

    def kill_all(self):
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


class Queue:
    def __init__(self, endpoint, name):
        cfg = Config(retries={"max_attempts": 10, "mode": "standard"}, max_pool_connections=16,
                     connect_timeout=3, read_timeout=30)
        self.sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1",
                                aws_access_key_id="test", aws_secret_access_key="test", config=cfg)
        self.name = name
        self.url = None

    def create(self):
        self.url = self.sqs.create_queue(QueueName=self.name)["QueueUrl"]
        return self.url

    def send(self, indexed_bodies):
        """Sends (index, body) pairs; returns {sqs message id: index}."""
        ids = {}
        lock = threading.Lock()
        chunks = [indexed_bodies[k:k + 10] for k in range(0, len(indexed_bodies), 10)]

        def one(chunk):
            entries = [{"Id": str(j), "MessageBody": b} for j, (_, b) in enumerate(chunk)]
            for _ in range(20):
                out = self.sqs.send_message_batch(QueueUrl=self.url, Entries=entries)
                with lock:
                    for ok in out.get("Successful", []):
                        ids[ok["MessageId"]] = chunk[int(ok["Id"])][0]
                failed = {f["Id"] for f in out.get("Failed", [])}
                entries = [e for e in entries if e["Id"] in failed]
                if not entries:
                    return
                time.sleep(0.2)
            raise RuntimeError(f"could not send {len(entries)} messages")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, chunks))
        return ids

    def depth(self):
        try:
            a = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=[
                "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
            return int(a["ApproximateNumberOfMessages"]), int(a["ApproximateNumberOfMessagesNotVisible"])
        except Exception:  # noqa: BLE001 - unreachable or restarting: unknown
            return None


def run_as_pg(args):
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--"] + args
    return args


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spec", choices=sorted(SPECS), default="logins",
                    help="which shipped spec to run (scripts/fault_specs.py)")
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--invalid", type=int, default=None, help="default: 1%% of --messages")
    ap.add_argument("--kills", type=int, default=5, help="SIGKILLs of a random engine (default 5)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--visibility-timeout", type=int, default=10)
    ap.add_argument("--pg-outage-secs", type=int, default=10)
    ap.add_argument("--timeout", type=int, default=None, help="give up after this many seconds (default scales with N)")
    ap.add_argument("--engine", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--pg-bin", required=True)
    ap.add_argument("--pg-port", type=int, required=True)
    ap.add_argument("--sqs-port", type=int, required=True)
    a = ap.parse_args()

    n = a.messages
    invalid = a.invalid if a.invalid is not None else n // 100
    if not (n > 0 and 0 <= invalid <= n and a.processes >= 1):
        ap.error("need --messages > 0, 0 <= --invalid <= --messages, --processes >= 1")
    seed = a.seed if a.seed is not None else random.randrange(1 << 31)
    rng = random.Random(seed)
    timeout = a.timeout or (300 + n // 20)
    started = time.time()
    stamp = time.strftime("%Y%m%d%H%M%S")
    tag = f"ft{seed:x}"
    endpoint = f"http://127.0.0.1:{a.sqs_port}"
    db = f"fault_{stamp}_{seed % 100000}"
    run_dir = os.path.join(a.state_dir, f"run-{stamp}-{seed}")
    os.makedirs(run_dir, exist_ok=True)
    log(f"seed {seed}; logs in {run_dir}")

    plugin = SPECS[a.spec]()
    admin = Psql(a.pg_bin, a.pg_port, "postgres")
    admin.run(f"CREATE DATABASE {db}")
    pg = Psql(a.pg_bin, a.pg_port, db)
    for ddl in plugin.ddl:
        with open(os.path.join(a.root, ddl)) as f:
            pg.run(f.read())
    db_url = f"postgres://postgres:postgres@127.0.0.1:{a.pg_port}/{db}"

    keyring = os.path.join(run_dir, "keyring.json")
    subprocess.run([a.engine, "keygen", keyring], check=True, stdout=subprocess.DEVNULL)
    queue = Queue(endpoint, f"{plugin.queue_prefix}-{stamp}-{seed % 100000}")
    queue.create()
    spec = os.path.join(a.root, plugin.spec)
    # The shipped spec, pointed at this run's queue and database. A short visibility timeout
    # makes messages held by a killed engine come back soon; a short long-poll keeps restarts quick.
    overrides = {"ETL_SPEC_SOURCE__QUEUE": queue.name, "ETL_SPEC_SOURCE__ENDPOINT_URL": endpoint,
                 "ETL_SPEC_SOURCE__REGION": "us-east-1", "ETL_SPEC_SOURCE__WAIT_TIME_SECS": "2",
                 "ETL_SPEC_SOURCE__VISIBILITY_TIMEOUT_SECS": str(a.visibility_timeout),
                 "ETL_SPEC_TARGET__URL": db_url}
    with open(os.path.join(run_dir, "overrides.env"), "w") as f:
        f.writelines(f"{k}={v}\n" for k, v in overrides.items())
    # The engine's own tables are an explicit, owner-run step; `run` only checks their version.
    subprocess.run([a.engine, "setup", spec], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, **overrides})

    bodies, kinds = plugin.make_messages(n, invalid, rng, tag)
    n_valid = sum(1 for k in kinds if k == "valid")
    t0 = time.time()
    msg_index = queue.send(list(enumerate(bodies)))
    log(f"{a.spec}: sent {len(msg_index)} messages ({n_valid} valid, {invalid} invalid) in {time.time() - t0:.1f} s")

    engines = Engines(a.engine, spec, keyring, run_dir, a.processes, overrides)
    faults = ["kill"] * a.kills + ["pg_outage", "sqs_restart"]
    rng.shuffle(faults)
    thresholds = sorted(rng.uniform(0.05, 0.75) for _ in faults)
    plan = list(zip(thresholds, faults))
    log("fault plan (fraction of messages committed): " + ", ".join(f"{f}@{t:.0%}" for t, f in plan))

    # The run has its own database, so the whole ledger is this run's.
    ledger_sql = "SELECT count(*) FROM etl_ledger"
    kills = pg_outage = sqs_restarts = resent = 0
    pg_data = os.path.join(a.state_dir, "pg", "data")
    pg_opts = f"-p {a.pg_port} -k {os.path.join(a.state_dir, 'pg')} -c listen_addresses=127.0.0.1"
    services_env = dict(os.environ, ETL_LOCAL_DIR=a.state_dir, PGPORT=str(a.pg_port), SQS_PORT=str(a.sqs_port),
                        QUEUES=queue.name)

    def committed():
        return pg.scalar(ledger_sql)

    def overdue():
        if time.time() - started > timeout:
            raise TimeoutError

    engines.start_all()
    # Each fault also waits for some fresh progress after the one before, so that faults do not
    # pile up on one moment and each one hits engines that are busy.
    gap = max(1, n // 25)
    after_last = 0
    resend_thread, resend_errors = None, []
    try:
        for threshold, fault in plan:
            while True:
                overdue()
                engines.supervise()
                c = committed()
                # Every message ends with exactly one ledger entry (re-sent ones under their new
                # id), so the ledger reaches n: the gap never asks for more than that.
                if c is not None and c >= threshold * n and c >= min(after_last + gap, n):
                    break
                time.sleep(0.05)
            if fault == "kill":
                i = rng.randrange(a.processes)
                engines.kill(i)
                kills += 1
                log(f"SIGKILLed engine {i} at {c}/{n} committed; restarted it")
            elif fault == "pg_outage":
                subprocess.run(run_as_pg([os.path.join(a.pg_bin, "pg_ctl"), "-D", pg_data, "-m", "immediate", "-w", "stop"]),
                               check=True, stdout=subprocess.DEVNULL)
                down = time.time()
                log(f"stopped PostgreSQL (immediate) at {c}/{n} committed")
                time.sleep(a.pg_outage_secs)
                pg_outage = round(time.time() - down)
                subprocess.run(run_as_pg([os.path.join(a.pg_bin, "pg_ctl"), "-D", pg_data, "-l",
                                          os.path.join(a.state_dir, "postgres.log"), "-w", "-o", pg_opts, "start"]),
                               check=True, stdout=subprocess.DEVNULL)
                log(f"started PostgreSQL again after {pg_outage} s")
            elif fault == "sqs_restart":
                with open(os.path.join(a.state_dir, "localstack.pid")) as f:
                    ls_pid = int(f.read().strip())
                os.kill(ls_pid, signal.SIGTERM)
                for _ in range(100):
                    try:
                        os.kill(ls_pid, 0)
                    except ProcessLookupError:
                        break
                    time.sleep(0.2)
                else:
                    os.kill(ls_pid, signal.SIGKILL)
                log(f"stopped LocalStack (pid {ls_pid}) at {c}/{n} committed; its queue is gone with it")
                # Wait until the engines have committed what they hold: the ledger stops growing.
                last, since = committed(), time.time()
                while time.time() - since < 5:
                    overdue()
                    time.sleep(0.5)
                    now = committed()
                    if now != last:
                        last, since = now, time.time()
                done_ids = set(pg.column("SELECT message_id FROM etl_ledger"))
                done = {msg_index[m] for m in done_ids if m in msg_index}
                p = subprocess.run(["bash", os.path.join(a.root, "scripts", "services.sh"), "up"], env=services_env,
                                   capture_output=True, text=True)
                if p.returncode != 0:
                    raise RuntimeError(f"restarting LocalStack failed: {p.stderr.strip()}")
                queue.create()
                todo = [(i, bodies[i]) for i in range(n) if i not in done]
                resent += len(todo)
                sqs_restarts += 1
                log(f"LocalStack is back; re-sending the {len(todo)} messages not committed before the restart")

                # In the background: engines consume while it sends, and later faults may hit then.
                def resend(todo=todo):
                    try:
                        msg_index.update(queue.send(todo))
                    except Exception as e:  # noqa: BLE001 - reported by the main thread
                        resend_errors.append(e)

                resend_thread = threading.Thread(target=resend, daemon=True)
                resend_thread.start()
                after_last = last or c
                continue
            after_last = committed() or c

        if resend_thread is not None:
            resend_thread.join()
            if resend_errors:
                raise RuntimeError(f"re-sending after the LocalStack restart failed: {resend_errors[0]}")
            log("re-sending done")
        # Done when the queue stays empty (deletes happen only after commits) and nothing moves.
        log("all faults injected; waiting for the queue to empty")
        quiet_since, last = None, None
        while True:
            overdue()
            engines.supervise()
            d, c = queue.depth(), committed()
            if d == (0, 0) and c is not None and c == last:
                quiet_since = quiet_since or time.time()
                if time.time() - quiet_since >= 3:
                    break
            else:
                quiet_since = None
            last = c
            time.sleep(0.5)
        t_stop = time.time()
        codes = engines.stop_all(timeout=a.visibility_timeout)
        log(f"engines stopped with SIGTERM in {time.time() - t_stop:.1f} s, exit codes {codes}")
        clean_exit = all(code == 0 for code in codes)
    except TimeoutError:
        log(f"gave up after {timeout} s")
        engines.kill_all()
        clean_exit = False
    except BaseException:
        engines.kill_all()
        raise

    check = plugin.verify(pg, bodies, kinds)
    rows, duplicates, lost, unexpected = check["rows"], check["duplicates"], check["lost"], check["unexpected"]
    reject_ids = pg.column("SELECT message_id FROM etl_rejects")
    rejected_kinds = [kinds[msg_index[m]] if m in msg_index else "unknown" for m in reject_ids]
    wrongly_rejected = sum(1 for k in rejected_kinds if k == "valid" or k == "unknown")
    rejected_invalid = {msg_index[m] for m in reject_ids if m in msg_index and kinds[msg_index[m]] != "valid"}
    d = queue.depth()
    queue_left = sum(d) if d is not None else -1
    ok = (rows == check["expected"] and duplicates == 0 and lost == 0 and unexpected == 0
          and len(reject_ids) == invalid and len(rejected_invalid) == invalid and wrongly_rejected == 0
          and queue_left == 0 and clean_exit)
    result = "PASS" if ok else "FAIL"
    elapsed = time.time() - started
    print(f"fault-test: spec={a.spec} messages={n} valid={n_valid} rows={rows}/{check['expected']} "
          f"duplicates={duplicates} lost={lost} unexpected={unexpected} "
          f"rejects={len(reject_ids)}/{invalid} queue_left={queue_left} processes={a.processes} kills={kills} "
          f"pg_outage={pg_outage}s sqs_restart={sqs_restarts} resent_after_sqs_restart={resent} "
          f"engine_exits={engines.unexpected_exits} clean_shutdown={'yes' if clean_exit else 'no'} "
          f"seed={seed} elapsed={elapsed:.0f}s {result}", flush=True)
    if not ok:
        log(f"kept database {db} and logs in {run_dir} for inspection")
        if wrongly_rejected:
            log(f"{wrongly_rejected} rejects are not invalid messages: "
                + "; ".join(pg.column("SELECT DISTINCT reason FROM etl_rejects LIMIT 5")))
        return 1
    admin.run(f"DROP DATABASE {db}", check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
