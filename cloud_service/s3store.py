"""Artifacts in an S3-compatible object store, with the local directory as a cache.

The object store is the source of truth: ``commit`` uploads an object before it appears in
the local cache, so a file in the cache is always in the bucket too. ``path`` fetches an
object that the local cache lacks (another API process or worker machine stored it),
checks its BLAKE3 against its name, and only then puts it in the cache. Every caller of
``ArtifactStore`` keeps working on local files (FileResponse with Range, delta encoding),
and API processes and workers on different machines share one bucket.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from pathlib import Path
from typing import Any

import blake3

from cloud_service.errors import DependencyError, IntegrityError
from cloud_service.settings import Settings
from cloud_service.storage import CHUNK, ArtifactStore

log = logging.getLogger(__name__)


class S3ArtifactStore(ArtifactStore):
    def __init__(self, root: Path, bucket: str, client: Any, prefix: str = "") -> None:
        super().__init__(root)
        self.bucket, self.client = bucket, client
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        try:
            client.head_bucket(Bucket=bucket)
        except Exception as e:  # botocore raises many kinds; all mean "cannot use it"
            raise DependencyError(f"the artifact bucket {bucket!r} is not reachable: {e}; "
                                  "check HADMC_S3_* settings") from e

    def key(self, digest: str) -> str:
        self.local_path(digest)  # validates the digest
        return f"{self.prefix}objects/{digest[:2]}/{digest}"

    def _in_bucket(self, digest: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(digest))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def commit(self, tmp: Path, digest: str) -> Path:
        if not self.local_path(digest).is_file() and not self._in_bucket(digest):
            self.client.upload_file(str(tmp), self.bucket, self.key(digest))
        return super().commit(tmp, digest)

    def exists(self, digest: str) -> bool:
        return super().exists(digest) or self._in_bucket(digest)

    def path(self, digest: str) -> Path:
        local = self.local_path(digest)
        if not local.is_file() and self._in_bucket(digest):
            self._fetch(digest)
        return local

    def _fetch(self, digest: str) -> None:
        tmp = self.temp_file()
        try:
            self.client.download_file(self.bucket, self.key(digest), str(tmp))
            hasher = blake3.blake3()
            with open(tmp, "rb") as f:
                while block := f.read(CHUNK):
                    hasher.update(block)
            if hasher.hexdigest() != digest:
                raise IntegrityError(f"object {digest} in bucket {self.bucket!r} does not match "
                                     "its hash; it was altered in the object store")
            super().commit(tmp, digest)
        finally:
            with suppress(FileNotFoundError):
                tmp.unlink()


def make_store(settings: Settings) -> ArtifactStore:
    """The artifact store the settings name: a local directory, or S3 with it as cache."""
    if not settings.s3_bucket:
        return ArtifactStore(settings.artifact_dir)
    import boto3

    secret = settings.s3_secret_access_key
    client = boto3.client(
        "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret else None)
    return S3ArtifactStore(settings.artifact_dir, settings.s3_bucket, client,
                           prefix=settings.s3_prefix)
