"""The real intake app with a recorder that stores nothing: the HTTP + parsing ceiling of one
process (see bench/PROFILE.md).

    .venv/bin/python bench/noop_ingest.py PORT      # token "bench"; stop with Ctrl-C

Then load it like bench/intake.py does, e.g.:

    wrk -t2 -c64 -d10s --latency -s bench/wrk_post.lua http://127.0.0.1:PORT/v1/falco \
        -- BODIES bench application/json 1

(BODIES as written by ``intake.write_single_bodies`` / ``intake.write_batch_bodies``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from responder.intake.app import create_app
from responder.intake.backends import Backends
from responder.intake.recording import Recorded
from responder.settings import Settings


class NoopRecorder:
    def record(self, alerts: Sequence[Any], *, batch_id: str | None = None) -> Recorded:
        return Recorded(["01JBENCH000000000000000000"] * len(alerts))

    def flush_audit(self) -> int:
        return 0


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8089
    settings = Settings(ingest_token=SecretStr("bench"), max_body_bytes=64 * 1024 * 1024)
    backends = Backends(settings, engine=None, redis=None, correlator=None,  # type: ignore[arg-type]
                        recorder=NoopRecorder())  # type: ignore[arg-type]
    uvicorn.run(create_app(backends), host="127.0.0.1", port=port, access_log=False,
                log_level="warning", server_header=False)


if __name__ == "__main__":
    main()
