"""Where a recording transaction's time goes: CPU in this process vs waiting on PostgreSQL/Redis.

    .venv/bin/python bench/recorder_cost.py [BATCH_SIZE ...]

Calls ``Recorder.record`` in-process (production backends: a throw-away PostgreSQL database and
Redis key prefix, both removed afterwards) with batches of drift alerts spread over 100
containers, after a warm-up that opened the incidents and filled their first-N samples, and
prints per transaction: wall time, CPU time of the calling thread (``time.thread_time``), the
difference (time spent waiting on the servers), and the CPU per alert. Then the CPU per alert of
each parsing step. A companion to bench/intake.py (see bench/PROFILE.md).
"""

from __future__ import annotations

import os
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from responder.intake import backends as backends_mod  # noqa: E402
from responder.intake.parsing import decode_body, parse_body, validate_items  # noqa: E402
from responder.models import alerts as alerts_mod  # noqa: E402
from responder.settings import Settings  # noqa: E402
from tests.support.samples import drift_alert  # noqa: E402

PG_ADMIN_URL = os.environ.get("DRIFT_BENCH_PG_ADMIN_URL",
                              "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("DRIFT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
NDJSON = "application/x-ndjson"


def per_alert_us(func: Callable[[], object], n: int, reps: int = 5) -> float:
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6


def main() -> int:
    sizes = [int(a) for a in sys.argv[1:]] or [1, 16, 64, 500, 2000, 5000]
    lines = [orjson.dumps(drift_alert(i % 100, seq=i)) for i in range(max(5000, *sizes))]
    suffix = secrets.token_hex(4)
    dbname, prefix = f"drift_bench_cost_{suffix}", f"drift-bench-cost-{suffix}:"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    try:
        settings = Settings(database_url=PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{dbname}",
                            redis_url=REDIS_URL, redis_prefix=prefix)
        backends = backends_mod.open_backends(settings)
        recorder = backends.recorder

        def batch(n: int) -> list[alerts_mod.Alert]:
            return validate_items(decode_body(b"\n".join(lines[:n]), NDJSON, max_items=n))

        for _ in range(5):
            recorder.record(batch(500))
        print("Recorder.record on PostgreSQL + Redis, 100 open incidents:")
        for n in sizes:
            alerts = batch(n)
            reps = max(3, min(100, 3000 // n))
            walls, cpus = [], []
            for _ in range(reps):
                t0, c0 = time.perf_counter(), time.thread_time()
                recorder.record(alerts)
                cpus.append(time.thread_time() - c0)
                walls.append(time.perf_counter() - t0)
            wall, cpu = statistics.median(walls), statistics.median(cpus)
            print(f"  {n:5d} alerts/txn: {wall * 1000:7.1f} ms wall, {cpu * 1000:7.1f} ms CPU, "
                  f"{(wall - cpu) * 1000:5.1f} ms waiting; {cpu / n * 1e6:5.0f} us CPU/alert; "
                  f"{n / wall:7,.0f} alerts/s if transactions ran back to back")
        backends.close()
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()

    body = b"\n".join(lines[:5000])
    items = decode_body(body, NDJSON, max_items=5000)
    payloads = [alerts_mod.FalcoPayload.model_validate(i) for i in items]
    print("Parsing, per alert:")
    steps: list[tuple[str, Callable[[], object]]] = [
        ("decode_body (orjson, NDJSON)", lambda: decode_body(body, NDJSON, max_items=5000)),
        ("FalcoPayload.model_validate", lambda: [alerts_mod.FalcoPayload.model_validate(i)
                                                 for i in items]),
        ("normalise", lambda: [alerts_mod.normalise(p, i, b"") for p, i in zip(payloads, items,
                                                                                  strict=True)]),
        ("validate_items (parse_alert, re-serialising each item)", lambda: validate_items(items)),
        ("parse_body (NDJSON bytes -> alerts, what the intake runs)",
         lambda: parse_body(body, NDJSON, max_items=5000)),
    ]
    for label, func in steps:
        print(f"  {label:42s} {per_alert_us(func, len(items)):6.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
