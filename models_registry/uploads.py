"""Streaming artifact uploads: hash and count chunk by chunk, stop at the size limit.

The view installs `ArtifactUploadHandler` on the request before DRF parses the multipart body, so the
artifact never sits whole in memory: each 64 KiB chunk is hashed, counted and written to a temporary
file (the final, content-addressed storage key is only known once the last chunk has been hashed).
Passing MAX_ARTIFACT_SIZE_MB raises `ArtifactTooLarge` at that chunk; the temporary file is deleted and
nothing has reached storage or the database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import IO, Any

from django.conf import settings
from django.core.files.uploadedfile import TemporaryUploadedFile
from django.core.files.uploadhandler import FileUploadHandler

from .exceptions import ArtifactTooLarge


def max_artifact_bytes() -> int:
    return settings.MAX_ARTIFACT_SIZE_MB * 1024 * 1024


class HashedUploadedFile(TemporaryUploadedFile):
    """A temporary file whose sha256 and size were computed while it was received."""

    sha256: str = ""


class ArtifactUploadHandler(FileUploadHandler):
    """The only upload handler on registry writes: every file field (the API has one, `artifact`) is
    hashed and counted as it arrives and may not exceed MAX_ARTIFACT_SIZE_MB."""

    chunk_size = 64 * 1024

    def __init__(self, request: Any = None) -> None:
        super().__init__(request)
        self.limit = max_artifact_bytes()
        self._digest = hashlib.sha256()
        self._size = 0
        self._file: HashedUploadedFile | None = None

    def new_file(self, field_name: str, file_name: str, *args: Any, **kwargs: Any) -> None:
        super().new_file(field_name, file_name, *args, **kwargs)
        self._digest = hashlib.sha256()
        self._size = 0
        self._file = HashedUploadedFile(file_name, self.content_type, 0, self.charset, self.content_type_extra)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        assert self._file is not None  # noqa: S101 - Django calls new_file first
        self._size += len(raw_data)
        if self._size > self.limit:
            self.abort()
            raise ArtifactTooLarge(self.limit)
        self._digest.update(raw_data)
        self._file.write(raw_data)

    def file_complete(self, file_size: int) -> HashedUploadedFile | None:
        if self._file is None:
            return None
        self._file.seek(0)
        self._file.size = file_size
        self._file.sha256 = self._digest.hexdigest()
        uploaded, self._file = self._file, None
        return uploaded

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()  # a NamedTemporaryFile: closing removes it
            self._file = None

    def upload_interrupted(self) -> None:
        self.abort()


def hash_stream(stream: IO[bytes] | Iterable[bytes], limit: int) -> tuple[str, int]:
    """sha256 and size of a file-like object, chunk by chunk (for callers outside HTTP: samples, admin)."""
    digest = hashlib.sha256()
    size = 0
    chunks = stream.chunks() if hasattr(stream, "chunks") else iter(lambda: stream.read(64 * 1024), b"")  # type: ignore[union-attr]
    for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise ArtifactTooLarge(limit)
        digest.update(chunk)
    return digest.hexdigest(), size
