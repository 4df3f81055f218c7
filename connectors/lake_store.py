"""Where the raw lake lives: URL parsing, the filesystem, file names and the per-sequence manifests.

Layout under the lake root (Hive style, by the reading's event time in UTC)::

    dt=2026-11-23/hour=07/part-003-0000000042.parquet     data: sink partition 3, sequence 42
    _manifests/part-003-0000000042.json                   the data files sequence 42 of partition 3 may have

A manifest is written *before* the data files it names, so whatever a crash leaves behind is always listed
by some manifest and can be found again without listing every dt/hour directory. Readers never look at
`_manifests` nor at the `.`-prefixed temporary files: pyarrow.dataset skips `_` and `.` prefixes.
"""

from __future__ import annotations

import json
import posixpath
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

from plantpulse.settings import Settings

MANIFEST_DIR = "_manifests"
MS_PER_HOUR = 3_600_000


def open_lake(
    lake_url: str,
    fs: AbstractFileSystem | None = None,
    *,
    endpoint_url: str | None = None,
    key: str | None = None,
    secret: str | None = None,
    sse: str | None = None,
    ca_bundle: Path | None = None,
    s3_options: dict[str, Any] | None = None,
) -> tuple[AbstractFileSystem, str]:
    """(filesystem, root path within it) for `file:///abs/path` or `s3://bucket/prefix`.

    `fs`, when given, is used as is (tests, or a filesystem configured elsewhere); the S3 arguments are
    then ignored. `ca_bundle`: the CA file an https endpoint's certificate is verified against (a private
    CA); the system CAs otherwise. `s3_options` are extra `s3fs.S3FileSystem` keyword arguments (timeouts,
    retries, ...); the named arguments win over them. `s3_settings(settings)` gives the named ones.
    """
    if lake_url.startswith("file://"):
        root = lake_url.removeprefix("file://")
        if not root.startswith("/"):
            raise ValueError(f"lake: LAKE_URL={lake_url!r} must be file:///absolute/path")
        return fs or fsspec.filesystem("file"), root.rstrip("/") or "/"
    if lake_url.startswith("s3://"):
        root = lake_url.removeprefix("s3://").strip("/")
        if not root:
            raise ValueError(f"lake: LAKE_URL={lake_url!r} names no bucket; expected s3://bucket/prefix")
        if fs is not None:
            return fs, root
        # Nested dicts copied too: the caller's s3_options must not collect our additions.
        options: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in (s3_options or {}).items()}
        if endpoint_url is not None:
            options.setdefault("client_kwargs", {})["endpoint_url"] = endpoint_url
        if ca_bundle is not None:
            options.setdefault("client_kwargs", {})["verify"] = _checked_ca_bundle(ca_bundle, endpoint_url)
        if key is not None:
            options["key"] = key
        if secret is not None:
            options["secret"] = secret
        if sse is not None:
            options.setdefault("s3_additional_kwargs", {})["ServerSideEncryption"] = sse
        # Imported here so file:// lakes do not need s3fs (and its aiobotocore stack) at all.
        import s3fs

        return s3fs.S3FileSystem(**options), root
    raise ValueError(f"lake: LAKE_URL={lake_url!r}: expected file:///abs/path or s3://bucket/prefix")


def s3_settings(settings: Settings) -> dict[str, Any]:
    """`open_lake`'s S3 keyword arguments from the S3_* settings: the one place that maps them, so every
    lake reader and writer (flow sinks, quarantine, compaction, replay) reaches S3 the same way."""
    return {"endpoint_url": settings.s3_endpoint_url, "sse": settings.s3_sse, "ca_bundle": settings.s3_ca_bundle}


def _checked_ca_bundle(ca_bundle: Path, endpoint_url: str | None) -> str:
    if endpoint_url is not None and not endpoint_url.lower().startswith("https://"):
        # Refused rather than ignored: the operator asked for verified TLS and would get plaintext.
        raise ValueError(f"lake: S3_CA_BUNDLE={ca_bundle} is set but S3_ENDPOINT_URL={endpoint_url!r} is not https://")
    if not Path(ca_bundle).is_file():
        raise ValueError(f"lake: S3_CA_BUNDLE={ca_bundle} is not a readable file")
    return str(ca_bundle)


def is_local(fs: AbstractFileSystem) -> bool:
    """Whether `fs` is the local disk (where a rename is atomic and directories must exist)."""
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def hour_dir(root: str, hour_bucket: int) -> str:
    """`root/dt=YYYY-MM-DD/hour=HH` of an hour bucket (event-time milliseconds // 3_600_000, UTC)."""
    start = datetime.fromtimestamp(hour_bucket * 3600, tz=UTC)
    return posixpath.join(root, f"dt={start:%Y-%m-%d}", f"hour={start:%H}")


def file_name(partition: int, seq: int) -> str:
    return f"part-{partition:03d}-{seq:010d}.parquet"


def temp_path(path: str) -> str:
    """Hidden sibling of `path` that a local write goes to before its rename."""
    head, tail = posixpath.split(path)
    return posixpath.join(head, f".{tail}.tmp")


def manifest_path(root: str, partition: int, seq: int) -> str:
    return posixpath.join(root, MANIFEST_DIR, f"part-{partition:03d}-{seq:010d}.json")


def read_manifest(fs: AbstractFileSystem, root: str, partition: int, seq: int) -> list[str] | None:
    """Data file paths listed for (partition, seq), or None when there is no such manifest."""
    path = manifest_path(root, partition, seq)
    try:
        raw = fs.cat_file(path)
    except FileNotFoundError:
        return None
    try:
        files = json.loads(raw)["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"lake: manifest {path} is not valid: {exc}") from exc
    return [str(f) for f in files]


def put_bytes(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    """Write `data` to `path` so that readers see either no file, the old one or the whole new one.

    Local disk: write a hidden temporary file, then rename (atomic within a filesystem). S3: one PUT
    (or a multipart upload, which also appears only when completed) is atomic by itself.
    """
    if is_local(fs):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = temp_path(path)
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    else:
        fs.pipe_file(path, data)


def write_manifest(fs: AbstractFileSystem, root: str, partition: int, seq: int, files: list[str]) -> None:
    put_bytes(fs, manifest_path(root, partition, seq), json.dumps({"files": sorted(files)}).encode())


def remove_quietly(fs: AbstractFileSystem, paths: list[str]) -> None:
    """Delete `paths` (and their local temporaries); files already gone are fine - deleting is idempotent."""
    targets = list(paths) + ([temp_path(p) for p in paths] if is_local(fs) else [])
    for path in targets:
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass
    if not is_local(fs):
        fs.invalidate_cache()


def remove_manifest(fs: AbstractFileSystem, root: str, partition: int, seq: int) -> None:
    remove_quietly(fs, [manifest_path(root, partition, seq)])


def highest_seq(fs: AbstractFileSystem, root: str, partition: int) -> int | None:
    """The highest sequence with a manifest for `partition`, or None when the partition never wrote."""
    directory = posixpath.join(root, MANIFEST_DIR)
    try:
        names = [posixpath.basename(p) for p in fs.ls(directory, detail=False, refresh=True)]
    except FileNotFoundError:
        return None
    prefix = f"part-{partition:03d}-"
    seqs = [int(n[len(prefix) : -len(".json")]) for n in names if n.startswith(prefix) and n.endswith(".json")]
    return max(seqs, default=None)


def list_data_files(fs: AbstractFileSystem, directory: str) -> list[str]:
    """Visible `.parquet` files directly in `directory` (no temporaries), sorted; [] when it does not exist."""
    try:
        paths = fs.ls(directory, detail=False, refresh=True)
    except FileNotFoundError:
        return []
    names = (posixpath.basename(p.rstrip("/")) for p in paths)
    return sorted(posixpath.join(directory, n) for n in names if n.endswith(".parquet") and not n.startswith((".", "_")))


def partition_of(file_path: str) -> int | None:
    """The sink partition of a `part-PPP-SSSSSSSSSS.parquet` file, or None for other names."""
    name = posixpath.basename(file_path)
    pieces = name.removesuffix(".parquet").split("-")
    if len(pieces) == 3 and pieces[0] == "part" and pieces[1].isdigit() and pieces[2].isdigit():
        return int(pieces[1])
    return None
