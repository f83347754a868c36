"""Evidence artifacts: bytes stored content-addressed by sha256, indexed per incident.

The file name *is* the hash, so an artifact cannot be swapped without the swap showing (``verify``
re-hashes), and storing the same bytes twice stores them once. Files are written to a temporary
name and renamed, so a reader never sees half an artifact; they are read-only (0400) once stored.
The index row and the audit record (``evidence.collected``) are written by the step that collected
them, in the transaction that records its result.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import Connection, insert, select

from responder.store.schema import artifacts

CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class StoredArtifact:
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class ArtifactRow:
    incident_id: str
    sha256: str
    name: str
    media_type: str
    size: int
    collector: str
    method: str
    node: str | None
    run_id: str | None
    step_id: str | None
    created_ns: int


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return self.root / "sha256" / sha256[:2] / sha256

    def put_bytes(self, data: bytes) -> StoredArtifact:
        sha = hashlib.sha256(data).hexdigest()
        target = self.path(sha)
        if not target.exists():
            self._write(target, [data])
        return StoredArtifact(sha, len(data))

    def put_file(self, source: BinaryIO, *, max_bytes: int | None = None) -> StoredArtifact:
        """Copy a stream in while hashing it; above ``max_bytes`` nothing is kept (ValueError)."""
        self.root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(CHUNK):
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise ValueError(f"artifact larger than {max_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
            sha = digest.hexdigest()
            target = self.path(sha)
            if target.exists():
                os.unlink(tmp)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(tmp, 0o400)
                os.replace(tmp, target)
            return StoredArtifact(sha, size)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def read_bytes(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def verify(self, sha256: str) -> bool:
        """True when the stored bytes still hash to their name."""
        digest = hashlib.sha256()
        try:
            with self.path(sha256).open("rb") as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
        except FileNotFoundError:
            return False
        return digest.hexdigest() == sha256

    def _write(self, target: Path, chunks: list[bytes]) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
            os.chmod(tmp, 0o400)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def record(conn: Connection, row: ArtifactRow) -> None:
    """Index an artifact under its incident (once per incident and hash)."""
    exists = conn.execute(select(artifacts.c.sha256).where(
        artifacts.c.incident_id == row.incident_id, artifacts.c.sha256 == row.sha256)).first()
    if exists is None:
        conn.execute(insert(artifacts).values(
            incident_id=row.incident_id, sha256=row.sha256, name=row.name,
            media_type=row.media_type, size=row.size, collector=row.collector,
            method=row.method, node=row.node, run_id=row.run_id, step_id=row.step_id,
            created_ns=row.created_ns))


def for_incident(conn: Connection, incident_id: str) -> list[ArtifactRow]:
    rows = conn.execute(select(artifacts).where(artifacts.c.incident_id == incident_id)
                        .order_by(artifacts.c.created_ns, artifacts.c.name)).all()
    return [ArtifactRow(**r._mapping) for r in rows]
