"""Produced files, stored in PostgreSQL so any worker (any host) reads what another wrote.

Intermediates are written unpublished; the pipeline's store step publishes the final one. A backend for
object storage would keep the same four calls."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

import asyncpg


@dataclass(frozen=True, slots=True)
class ArtifactRef:
    id: UUID
    job_id: UUID
    name: str
    media_type: str
    size: int
    sha256: str
    published: bool

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> ArtifactRef:
        return cls(r["id"], r["job_id"], r["name"], r["media_type"], r["size"], r["sha256"], r["published"])

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "media_type": self.media_type,
            "size": self.size,
            "sha256": self.sha256,
        }


class ArtifactNotFound(LookupError):
    pass


_COLUMNS = "id, job_id, name, media_type, size, sha256, published"


class ArtifactStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def put(self, job_id: UUID, name: str, media_type: str, data: bytes) -> ArtifactRef:
        r = await self.pool.fetchrow(
            f"""INSERT INTO generation_artifacts (id, job_id, name, media_type, size, sha256, content)
                VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_COLUMNS}""",
            uuid4(),
            job_id,
            name,
            media_type,
            len(data),
            hashlib.sha256(data).hexdigest(),
            data,
        )
        assert r is not None
        return ArtifactRef.from_record(r)

    async def ref(self, artifact_id: UUID) -> ArtifactRef:
        r = await self.pool.fetchrow(f"SELECT {_COLUMNS} FROM generation_artifacts WHERE id=$1", artifact_id)
        if r is None:
            raise ArtifactNotFound(str(artifact_id))
        return ArtifactRef.from_record(r)

    async def content(self, artifact_id: UUID) -> bytes:
        data = await self.pool.fetchval("SELECT content FROM generation_artifacts WHERE id=$1", artifact_id)
        if data is None:
            raise ArtifactNotFound(str(artifact_id))
        return bytes(data)

    async def publish(self, artifact_id: UUID, name: str) -> ArtifactRef:
        r = await self.pool.fetchrow(
            f"UPDATE generation_artifacts SET published=true, name=$2 WHERE id=$1 RETURNING {_COLUMNS}",
            artifact_id,
            name,
        )
        if r is None:
            raise ArtifactNotFound(str(artifact_id))
        return ArtifactRef.from_record(r)
