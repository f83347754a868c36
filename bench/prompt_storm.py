"""Background alert storm for bench/prompt.py: NDJSON batches at a fixed offered rate.

Runs as its own process (the ingest under test and the benchmark's measuring client must not
share an interpreter with the load):

    python bench/prompt_storm.py --url http://127.0.0.1:PORT/v1/falco --token T \
        --template FILE --rate 2000 --batch 200 --concurrency 2 [--duration S]

FILE holds one alert body per container (one per line) with the placeholder @@SEQ@@ in its uuid;
alert i goes to container i % containers with a distinct uuid. Batch k is due at
start + k * batch / rate; each of the --concurrency keep-alive connections takes the next due
batch, sleeps until it is due and posts it. A connection that falls behind posts at once, but the
schedule never lets a backlog of more than one second build up (slots older than that are
dropped and counted as ``skipped``), so the achieved rate is what the ingest could take.

Runs until SIGTERM / SIGINT (or --duration seconds), then prints one line "BENCH_JSON {...}":
alerts sent and accepted, statuses, elapsed time, achieved rate overall and per second, batch
latencies, skipped slots.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

PLACEHOLDER = b"@@SEQ@@"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--template", required=True)
    parser.add_argument("--rate", type=float, default=2000.0, help="alerts per second offered")
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--duration", type=float, default=3600.0, help="stop after S seconds")
    parser.add_argument("--run", type=int, default=0, help="goes into the uuids")
    args = parser.parse_args()

    with open(args.template, "rb") as fh:
        lines = [line for line in fh.read().split(b"\n") if line.strip()]
    parts = [line.split(PLACEHOLDER, 1) for line in lines]
    if not parts or any(len(p) != 2 for p in parts):
        print(f"every template line needs {PLACEHOLDER!r}", file=sys.stderr)
        return 2
    containers = len(parts)
    url = urlsplit(args.url)
    interval = args.batch / args.rate
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    lock = threading.Lock()
    state: dict[str, Any] = {"slot": 0, "skipped": 0, "seq": 0}
    statuses: dict[int, int] = {}
    accepted = 0
    sent = 0
    latencies: list[float] = []
    per_second: dict[int, int] = {}  # second since start -> alerts accepted (by answer time)
    failures: list[str] = []
    started = time.perf_counter()
    started_ns = time.time_ns()

    def body_for(start: int, size: int) -> bytes:
        out = []
        for n in range(start, start + size):
            head, tail = parts[n % containers]
            out.append(head + b"%02x%010x" % (args.run % 256, n) + tail)
        return b"\n".join(out)

    def take() -> tuple[float, int] | None:
        """The next batch: (when it is due, first alert sequence number)."""
        with lock:
            now = time.perf_counter()
            due = started + state["slot"] * interval
            if now - due > 1.0:  # more than a second behind: drop the stale slots
                behind = int((now - due - 1.0) / interval) + 1
                state["slot"] += behind
                state["skipped"] += behind
                due = started + state["slot"] * interval
            state["slot"] += 1
            seq = state["seq"]
            state["seq"] += args.batch
            return due, seq

    def worker() -> None:
        nonlocal accepted, sent
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
        headers = {"Authorization": f"Bearer {args.token}",
                   "Content-Type": "application/x-ndjson"}
        while not stop.is_set():
            item = take()
            if item is None:
                break
            due, seq = item
            wait = due - time.perf_counter()
            if wait > 0 and stop.wait(wait):
                break
            if time.perf_counter() - started > args.duration:
                stop.set()
                break
            body = body_for(seq, args.batch)
            t0 = time.perf_counter()
            try:
                conn.request("POST", url.path, body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    if len(failures) < 20:
                        failures.append(f"batch at {seq}: {type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
                continue
            t1 = time.perf_counter()
            with lock:
                sent += args.batch
                statuses[response.status] = statuses.get(response.status, 0) + 1
                latencies.append(t1 - t0)
                if response.status == 202:
                    n = int(json.loads(payload)["accepted"])
                    accepted += n
                    second = int(t1 - started)
                    per_second[second] = per_second.get(second, 0) + n
                elif len(failures) < 20:
                    failures.append(f"batch at {seq}: {response.status} {payload[:300]!r}")
        conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(0.2)
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0

    result = {
        "started_ns": started_ns, "offered_rate": args.rate, "batch": args.batch,
        "concurrency": args.concurrency,
        "sent": sent, "accepted": accepted, "batches": len(latencies),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "elapsed_s": elapsed, "alerts_per_s": accepted / elapsed if elapsed else 0.0,
        "per_second": [per_second.get(s, 0) for s in range(int(elapsed) + 1)],
        "skipped_slots": state["skipped"],
        "batch_p50_s": pct(0.50), "batch_p99_s": pct(0.99),
        "batch_max_s": latencies[-1] if latencies else 0.0, "failures": failures,
    }
    print("BENCH_JSON " + json.dumps(result), flush=True)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
