"""Load generator for bench/intake.py's storm: POST exactly N alerts as NDJSON batches.

Runs as its own process (the ingest under test must not share its interpreter with the load):

    python bench/post_batches.py --url http://127.0.0.1:PORT/v1/falco --token T \
        --template FILE --total 1000000 --batch 5000 --concurrency 2

FILE holds one alert body per container (one per line) with the placeholder @@SEQ@@ in its uuid.
Alert i of the storm goes to container i % containers and gets a distinct uuid. Prints one line
"BENCH_JSON {...}" with the counts, statuses and timings.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from urllib.parse import urlsplit

PLACEHOLDER = b"@@SEQ@@"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--template", required=True)
    parser.add_argument("--total", type=int, required=True)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--run", type=int, default=0, help="goes into the uuids")
    args = parser.parse_args()

    with open(args.template, "rb") as fh:
        lines = [line for line in fh.read().split(b"\n") if line.strip()]
    parts = [line.split(PLACEHOLDER, 1) for line in lines]
    if any(len(p) != 2 for p in parts):
        print(f"every template line needs {PLACEHOLDER!r}", file=sys.stderr)
        return 2
    containers = len(parts)
    url = urlsplit(args.url)
    batches = [(start, min(args.batch, args.total - start))
               for start in range(0, args.total, args.batch)]
    lock = threading.Lock()
    next_batch = iter(batches)
    statuses: dict[int, int] = {}
    accepted = 0
    latencies: list[float] = []
    failures: list[str] = []

    def body_for(start: int, size: int) -> bytes:
        out = []
        for n in range(start, start + size):
            head, tail = parts[n % containers]
            out.append(head + b"%02x%010x" % (args.run % 256, n) + tail)
        return b"\n".join(out)

    def worker() -> None:
        nonlocal accepted
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
        headers = {"Authorization": f"Bearer {args.token}",
                   "Content-Type": "application/x-ndjson"}
        while True:
            with lock:
                item = next(next_batch, None)
            if item is None:
                break
            body = body_for(*item)
            t0 = time.perf_counter()
            try:
                conn.request("POST", url.path, body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    failures.append(f"batch at {item[0]}: {type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
                continue
            elapsed = time.perf_counter() - t0
            with lock:
                statuses[response.status] = statuses.get(response.status, 0) + 1
                latencies.append(elapsed)
                if response.status == 202:
                    accepted += int(json.loads(payload)["accepted"])
                elif len(failures) < 20:
                    failures.append(f"batch at {item[0]}: {response.status} {payload[:300]!r}")
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0

    result = {
        "sent": args.total, "accepted": accepted, "batches": len(batches),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "elapsed_s": elapsed, "alerts_per_s": accepted / elapsed if elapsed else 0.0,
        "batch_p50_s": pct(0.50), "batch_p99_s": pct(0.99),
        "batch_max_s": latencies[-1] if latencies else 0.0, "failures": failures[:20],
    }
    print("BENCH_JSON " + json.dumps(result), flush=True)
    return 0 if accepted == args.total else 1


if __name__ == "__main__":
    sys.exit(main())
