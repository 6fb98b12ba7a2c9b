"""The one storage seam: local folders and s3:// URIs (MinIO) behind the same few functions.

Components never build bucket paths or clients by hand; they call these. S3 endpoint and credentials come
from the environment only (never from pipeline parameters, so they never land in compiled YAML):

- endpoint: ``KFOPS_S3_ENDPOINT_URL``, else ``MLFLOW_S3_ENDPOINT_URL``, else ``AWS_ENDPOINT_URL``
  (e.g. ``http://minio.kubeflow:9000``)
- credentials: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``)
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

from kfops.components.contracts import KfopsError

ENDPOINT_VARIABLES = ("KFOPS_S3_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL")


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or an s3:// URI."""
    if is_s3(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise KfopsError(f"not an s3:// URI: '{uri}'")
    return parsed.netloc, parsed.path.lstrip("/")


def s3_endpoint() -> str:
    for name in ENDPOINT_VARIABLES:
        if os.environ.get(name):
            return os.environ[name]
    return "https://s3.amazonaws.com"


def s3_client():
    """A minio client for the configured endpoint, retrying as the suite's policy says (``retry``: in a pipeline
    step at most 5 attempts within 60 s, elsewhere 3 quick ones; each retry logged and counted), so a short outage
    is ridden out and a long one fails with an error that names the endpoint."""
    import urllib3
    from minio import Minio

    from kfops.components import retry

    endpoint = s3_endpoint()
    parsed = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5.0, read=60.0),
        retries=retry.counting_retry(status_forcelist=(500, 502, 503, 504)),
    )
    return Minio(
        parsed.netloc,
        access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        session_token=os.environ.get("AWS_SESSION_TOKEN"),
        secure=parsed.scheme == "https",
        region=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or None,
        http_client=http,
    )


def _s3_error(uri: str, err: Exception) -> KfopsError:
    import urllib3

    if isinstance(err, urllib3.exceptions.HTTPError | OSError):
        return KfopsError(f"cannot reach S3 endpoint {s3_endpoint()} for {uri}: {err}")
    return KfopsError(f"S3 request for {uri} failed: {err}")


def _s3_call(uri: str, fn, *args, **kwargs):
    from minio.error import S3Error

    try:
        return fn(*args, **kwargs)
    except S3Error as err:
        if err.code in ("NoSuchKey", "NoSuchBucket"):
            raise FileNotFoundError(f"{uri} does not exist ({err.code})") from err
        raise _s3_error(uri, err) from err
    except Exception as err:
        raise _s3_error(uri, err) from err


def exists(uri: str) -> bool:
    if not is_s3(uri):
        return Path(uri).exists()
    bucket, key = split_s3(uri)
    try:
        _s3_call(uri, s3_client().stat_object, bucket, key)
    except FileNotFoundError:
        return False
    return True


def read_bytes(uri: str) -> bytes:
    if not is_s3(uri):
        path = Path(uri)
        if not path.exists():
            raise FileNotFoundError(f"{uri} does not exist")
        return path.read_bytes()
    bucket, key = split_s3(uri)
    response = _s3_call(uri, s3_client().get_object, bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def write_bytes(uri: str, data: bytes) -> None:
    if not is_s3(uri):
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader never sees half a file and a crash leaves nothing behind.
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except BaseException:
            # A failed write (a full disk) must not leave its partial file behind, holding space nobody frees.
            tmp.unlink(missing_ok=True)
            raise
        return
    bucket, key = split_s3(uri)
    client = s3_client()
    if not _s3_call(uri, client.bucket_exists, bucket):
        _s3_call(uri, client.make_bucket, bucket)
    _s3_call(uri, client.put_object, bucket, key, io.BytesIO(data), len(data))


def upload_dir(local_dir: str | Path, uri: str) -> None:
    """Copy a local folder's files under a local path or s3:// prefix."""
    local_dir = Path(local_dir)
    if not is_s3(uri):
        shutil.copytree(local_dir, uri, dirs_exist_ok=True)
        return
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        write_bytes(join(uri, path.relative_to(local_dir).as_posix()), path.read_bytes())


def download_to(uri: str, local_path: str | Path) -> Path:
    """Fetch one object (or local file) to a local path and return that path."""
    local_path = Path(local_path)
    local_path.parent.mkdir(parents=True, exist_ok=True)
    local_path.write_bytes(read_bytes(uri))
    return local_path


# ------------------------------------------------------------------------------------ listing and streaming
def _hidden(relative: str) -> bool:
    """Temporary and marker files (``.name.tmp-*``, ``_manifest.json``, ``_SUCCESS``) and what is under them."""
    return any(part.startswith((".", "_")) for part in relative.split("/") if part)


def list_files(uri: str) -> list[tuple[str, int]]:
    """``(uri, size in bytes)`` of every file under a local folder or s3:// prefix, recursively, sorted by URI.
    Names starting with ``.`` or ``_`` (below ``uri``) are skipped: temporary and marker files."""
    if not is_s3(uri):
        root = Path(uri)
        if not root.is_dir():
            return []
        found = [(p, p.relative_to(root).as_posix()) for p in root.rglob("*") if p.is_file()]
        return sorted((str(p), p.stat().st_size) for p, rel in found if not _hidden(rel))
    bucket, key = split_s3(uri)
    prefix = key.rstrip("/") + "/" if key else ""
    objects = _s3_call(uri, lambda: list(s3_client().list_objects(bucket, prefix=prefix, recursive=True)))
    return sorted(
        (f"s3://{bucket}/{o.object_name}", int(o.size or 0))
        for o in objects
        if not o.is_dir and not _hidden(o.object_name[len(prefix) :])
    )


def size(uri: str) -> int:
    """Size of one file or object in bytes; FileNotFoundError when it does not exist."""
    if not is_s3(uri):
        path = Path(uri)
        if not path.is_file():
            raise FileNotFoundError(f"{uri} does not exist")
        return path.stat().st_size
    bucket, key = split_s3(uri)
    return int(_s3_call(uri, s3_client().stat_object, bucket, key).size)


def iter_bytes(uri: str, offset: int = 0, length: int | None = None, chunk_size: int = 8 << 20):
    """The bytes of ``[offset, offset + length)`` of a file or object (to its end when ``length`` is None), in
    chunks of at most ``chunk_size``: memory stays bounded however large the file. S3 reads one ranged GET."""
    if length is not None and length <= 0:
        return
    if not is_s3(uri):
        try:
            fh = open(uri, "rb")  # noqa: SIM115 - closed below; a generator cannot use `with` across yields cleanly
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{uri} does not exist") from err
        try:
            fh.seek(offset)
            left = length
            while left is None or left > 0:
                block = fh.read(chunk_size if left is None else min(chunk_size, left))
                if not block:
                    return
                if left is not None:
                    left -= len(block)
                yield block
        finally:
            fh.close()
        return
    bucket, key = split_s3(uri)
    response = _s3_call(uri, s3_client().get_object, bucket, key, offset=offset, length=length or 0)
    try:
        yield from response.stream(chunk_size)
    except Exception as err:
        raise _s3_error(uri, err) from err
    finally:
        response.close()
        response.release_conn()


class _S3RangeFile(io.RawIOBase):
    """A seekable read-only file over one S3 object: each read is a ranged GET (Parquet reads footers and
    column chunks this way, never the whole object)."""

    def __init__(self, uri: str) -> None:
        super().__init__()
        self.uri = uri
        self.bucket, self.key = split_s3(uri)
        self.client = s3_client()
        self.length = int(_s3_call(uri, self.client.stat_object, self.bucket, self.key).size)
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.length}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer) -> int:
        want = min(len(buffer), self.length - self.position)
        if want <= 0:
            return 0
        response = _s3_call(self.uri, self.client.get_object, self.bucket, self.key, offset=self.position, length=want)
        try:
            data = response.read()
        finally:
            response.close()
            response.release_conn()
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


def open_binary(uri: str, buffer_size: int = 1 << 20):
    """A seekable binary file to read a local file or an S3 object (ranged GETs, ``buffer_size`` at a time)."""
    if not is_s3(uri):
        try:
            return open(uri, "rb")  # the caller closes it
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{uri} does not exist") from err
    return io.BufferedReader(_S3RangeFile(uri), buffer_size=buffer_size)


def upload_file(local_path: str | Path, uri: str) -> None:
    """Put a local file at a local path or s3:// URI, whole or not at all (rename locally, one PUT on S3)."""
    if not is_s3(uri):
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        shutil.copyfile(local_path, tmp)
        os.replace(tmp, path)
        return
    bucket, key = split_s3(uri)
    client = s3_client()
    if not _s3_call(uri, client.bucket_exists, bucket):
        _s3_call(uri, client.make_bucket, bucket)
    _s3_call(uri, client.fput_object, bucket, key, str(local_path))


def list_folders(uri: str) -> list[str]:
    """The names of the folders (s3: common prefixes) directly under a local folder or s3:// prefix, sorted; hidden
    ones (``.``/``_``) skipped. One listing call, however many files lie below: retention reads date partitions."""
    if not is_s3(uri):
        root = Path(uri)
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not _hidden(p.name))
    bucket, key = split_s3(uri)
    prefix = key.rstrip("/") + "/" if key else ""
    objects = _s3_call(uri, lambda: list(s3_client().list_objects(bucket, prefix=prefix, recursive=False)))
    names = (o.object_name[len(prefix) :].strip("/") for o in objects if o.is_dir)
    return sorted(n for n in names if n and not _hidden(n))


def delete_files(uris: list[str]) -> None:
    """Delete files or objects (a missing one is no error). A local folder left empty goes too, so a deleted date
    partition leaves no folder behind; s3 has no folders to leave."""
    local = [uri for uri in uris if not is_s3(uri)]
    for uri in local:
        Path(uri).unlink(missing_ok=True)
    for parent in sorted({Path(uri).parent for uri in local}, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            parent.rmdir()  # only succeeds when empty
    by_bucket: dict[str, list[str]] = {}
    for uri in uris:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            by_bucket.setdefault(bucket, []).append(key)
    if not by_bucket:
        return
    from minio.deleteobjects import DeleteObject

    client = s3_client()
    for bucket, keys in by_bucket.items():
        where = f"s3://{bucket}/"
        # remove_objects is lazy: the deletes happen (in requests of up to 1,000 keys) as its errors are read.
        errors = _s3_call(where, lambda b=bucket, k=keys: list(client.remove_objects(b, [DeleteObject(x) for x in k])))
        if errors:
            first = errors[0]
            raise KfopsError(
                f"cannot delete {len(errors)} object(s) under {where}, e.g. {first.name}: {first.code} {first.message}"
            )
