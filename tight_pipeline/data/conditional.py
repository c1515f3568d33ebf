"""Compare-and-swap on the output store: create only if absent, replace or delete only the version one read.

    v = read(url)                         # Versioned(data, etag, age_s) or None; age by the store's own clock
    etag = create(url, data)              # If-None-Match: *   -> PreconditionFailed when it exists
    etag = replace(url, data, v.etag)     # If-Match: <etag>   -> PreconditionFailed when another wrote since
    delete(url, v.etag)                   # If-Match: <etag>   -> PreconditionFailed (nothing deleted)

What the run lease (``pipeline/lease.py``) is built on. Object stores: S3's conditional requests (AWS S3, GCS's XML
API, MinIO, R2, SeaweedFS >= 4.x; checked against the project's SeaweedFS in tests/test_lease.py), through botocore
with the same environment s3fs reads (``AWS_ENDPOINT_URL``, the key variables). Local paths: an exclusive hard link
to create, and a lock file (``flock``) around compare-and-write for replace and delete, so local runs get the same
guarantee. Any other scheme raises ``NoConditionalWrites`` naming it: never a silent race.
"""

from __future__ import annotations

import contextlib
import email.utils
import fcntl
import hashlib
import os
import threading
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

from tight_pipeline.data.storage import StorageError, redact, scheme_of


class PreconditionFailed(RuntimeError):
    """Another writer created, replaced or deleted the object first (HTTP 412 / 409 on object stores)."""


class NoConditionalWrites(StorageError):
    """The store cannot create-if-absent or replace-if-unchanged (the message names it and what to use)."""


@dataclass(frozen=True)
class Versioned:
    data: bytes
    etag: str
    age_s: float  # seconds since the object was last written, by the store's clock (not this host's)


def supported(url: str) -> bool:
    return scheme_of(url) in ("file", "s3")


def _require(url: str) -> str:
    scheme = scheme_of(url)
    if scheme not in ("file", "s3"):
        raise NoConditionalWrites(
            f"{redact(url)}: the {scheme}:// store has no conditional writes here (create-if-absent, "
            "replace-if-unchanged), so two runs could both claim one output; use s3:// (AWS S3, GCS's S3 API, MinIO, "
            "R2, SeaweedFS) or a local path for outputs")
    return scheme


def read(url: str) -> Versioned | None:
    return _s3_read(url) if _require(url) == "s3" else _file_read(url)


def create(url: str, data: bytes) -> str:
    return _s3_put(url, data, if_none_match=True) if _require(url) == "s3" else _file_create(url, data)


def replace(url: str, data: bytes, etag: str) -> str:
    return _s3_put(url, data, if_match=etag) if _require(url) == "s3" else _file_replace(url, data, etag)


def delete(url: str, etag: str) -> None:
    if _require(url) == "s3":
        _s3_delete(url, etag)
    else:
        _file_delete(url, etag)


# -- S3 -----------------------------------------------------------------------------------------------------
_clients: dict[int, object] = {}
_clients_lock = threading.Lock()


def _client():
    """One botocore S3 client per thread (clients are thread-safe, sessions are not: keep it simple)."""
    key = threading.get_ident()
    with _clients_lock:
        client = _clients.get(key)
    if client is None:
        import botocore.session
        from botocore.config import Config

        # botocore reads AWS_ENDPOINT_URL and the key variables itself, as s3fs does.
        config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=30,
                        s3={"addressing_style": "path"} if os.environ.get("AWS_ENDPOINT_URL") else {})
        client = botocore.session.get_session().create_client(
            "s3", region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            config=config)
        with _clients_lock:
            _clients[key] = client
    return client


def _bucket_key(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    return parsed.netloc, parsed.path.lstrip("/")


def _code(exc) -> tuple[str, int]:
    response = getattr(exc, "response", None) or {}
    return (str((response.get("Error") or {}).get("Code", "")),
            int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode", 0) or 0))


def _lost(exc) -> bool:
    code, status = _code(exc)
    return status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict")


def _s3_call(url: str, what: str, fn):
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn()
    except ClientError as exc:
        if _lost(exc):
            raise PreconditionFailed(f"{redact(url)}: another writer changed it first") from None
        code, status = _code(exc)
        if code in ("NoSuchKey", "404") or status == 404:
            raise FileNotFoundError(redact(url)) from None
        if code in ("NotImplemented", "InvalidArgument") or status == 501:
            raise NoConditionalWrites(f"{redact(url)}: the S3 server refused a conditional {what} ({code}); it "
                                      "cannot hold a run lease — use a store with conditional writes") from None
        raise StorageError(f"{what} {redact(url)}: {redact(str(exc))}") from None
    except BotoCoreError as exc:
        raise StorageError(f"{what} {redact(url)}: {redact(str(exc))}") from None


def _s3_read(url: str) -> Versioned | None:
    bucket, key = _bucket_key(url)
    try:
        response = _s3_call(url, "reading", lambda: _client().get_object(Bucket=bucket, Key=key))
    except FileNotFoundError:
        return None
    data = response["Body"].read()
    now = response["ResponseMetadata"]["HTTPHeaders"].get("date")
    store_now = email.utils.parsedate_to_datetime(now).timestamp() if now else time.time()
    return Versioned(data, response["ETag"], max(0.0, store_now - response["LastModified"].timestamp()))


def _s3_put(url: str, data: bytes, if_none_match: bool = False, if_match: str | None = None) -> str:
    bucket, key = _bucket_key(url)
    condition = {"IfNoneMatch": "*"} if if_none_match else {"IfMatch": if_match}
    response = _s3_call(url, "writing", lambda: _client().put_object(Bucket=bucket, Key=key, Body=data, **condition))
    return response["ETag"]


def _s3_delete(url: str, etag: str) -> None:
    bucket, key = _bucket_key(url)
    try:
        _s3_call(url, "deleting", lambda: _client().delete_object(Bucket=bucket, Key=key, IfMatch=etag))
    except FileNotFoundError:
        pass


# -- local files -----------------------------------------------------------------------------------------------
def _path(url: str) -> str:
    return urlparse(url).path if url.startswith("file://") else url


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _locked(path: str):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path + ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _file_read(url: str) -> Versioned | None:
    path = _path(url)
    try:
        with open(path, "rb") as f:
            data = f.read()
            mtime = os.fstat(f.fileno()).st_mtime
    except FileNotFoundError:
        return None
    return Versioned(data, _etag(data), max(0.0, time.time() - mtime))


def _write_tmp(path: str, data: bytes) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _file_create(url: str, data: bytes) -> str:
    path = _path(url)
    tmp = _write_tmp(path, data)
    try:
        with _locked(path):
            os.link(tmp, path)  # atomic, and fails when the name exists: the whole claim or nothing
    except FileExistsError:
        raise PreconditionFailed(f"{url}: exists") from None
    finally:
        os.unlink(tmp)
    return _etag(data)


def _file_replace(url: str, data: bytes, etag: str) -> str:
    path = _path(url)
    with _locked(path):
        current = _file_read(url)
        if current is None or current.etag != etag:
            raise PreconditionFailed(f"{url}: another writer changed it first")
        os.replace(_write_tmp(path, data), path)
    return _etag(data)


def _file_delete(url: str, etag: str) -> None:
    path = _path(url)
    with _locked(path):
        current = _file_read(url)
        if current is None:
            return
        if current.etag != etag:
            raise PreconditionFailed(f"{url}: another writer changed it first")
        os.unlink(path)
