"""Bucket names, S3 object keys, ETags and listings: pure helpers, no network and no boto3.

Bucket names follow Qarnot's rule (:func:`bucket_name_problem`), the one rule the SDK and the
server check names with.

Keys are POSIX paths on every platform (:func:`normalize_key`). An ETag is computed locally the
way S3 computes it (:func:`etag_for_label`): the MD5 of the content for a single-part upload, the
MD5 of the part MD5s followed by ``-<parts>`` for a multipart one; :func:`etag_label` finds the
part size a listed ETag was made with, so files uploaded by other tools compare too.
"""
from __future__ import annotations

import hashlib
import os
import re
from datetime import datetime
from typing import Optional, Union

__all__ = [
    "MD5", "MULTIPART_SIZE", "MAX_PARTS", "COPY_LIMIT", "ObjectInfo", "normalize_key",
    "normalize_prefix", "join_key", "part_size_for", "upload_label", "etag_label",
    "etag_for_label", "compute_etag", "denied_message", "bucket_name_problem",
    "check_bucket_name",
]

MULTIPART_SIZE = 8 * 1024 * 1024  # threshold and part size of uploads (ETags depend on it)
MAX_PARTS = 10_000
COPY_LIMIT = 5 * 1024 ** 3  # CopyObject's limit: larger duplicates are uploaded instead
MD5 = "md5"  # the label of a plain MD5 ETag (see etag_label)
_BLOCK = 1024 * 1024
_NAME_CHARS = re.compile(r"[A-Za-z0-9._-]*", re.ASCII)
_ALNUM = re.compile(r"[A-Za-z0-9]", re.ASCII)


def bucket_name_problem(name: object) -> Optional[str]:
    """Why Qarnot's storage refuses ``name`` as a bucket name, or None if it accepts it.

    Accepted: 3 to 63 characters among letters (either case), digits, ``.``, ``-`` and ``_``,
    starting and ending with a letter or digit, without ``..`` (``meshroomIn``,
    ``autodock_vina-demo-input``).
    """
    if not isinstance(name, str):
        return "a bucket name is a string"
    if not 3 <= len(name) <= 63:
        return f"it has {len(name)} characters, a bucket name has 3 to 63"
    if not _NAME_CHARS.fullmatch(name):
        bad = next(c for c in name if not _NAME_CHARS.fullmatch(c))
        return f"{bad!r} is not allowed: use letters, digits, '.', '-' and '_'"
    if not (_ALNUM.fullmatch(name[0]) and _ALNUM.fullmatch(name[-1])):
        return "it must start and end with a letter or a digit"
    if ".." in name:
        return "it must not contain '..'"
    return None


def check_bucket_name(name: str) -> str:
    """``name`` if Qarnot's storage accepts it (:func:`bucket_name_problem`), else ValueError."""
    problem = bucket_name_problem(name)
    if problem:
        raise ValueError(f"{name!r} is not a valid bucket name: {problem}")
    return name


def normalize_key(key: Union[str, "os.PathLike[str]"]) -> str:
    """An object key as a POSIX path: ``\\`` → ``/``, repeated ``/`` collapsed, no leading ``/``.

    Surrounding whitespace is removed. A trailing ``/`` (a folder marker) is kept.
    """
    text = os.fspath(key).strip().replace("\\", "/")
    return re.sub(r"/{2,}", "/", text).lstrip("/")


def normalize_prefix(prefix: Optional[str]) -> str:
    """A folder prefix: normalised and ending with ``/`` (``""`` for none)."""
    text = normalize_key(prefix or "")
    return text if not text or text.endswith("/") else text + "/"


def join_key(prefix: Optional[str], relative: str) -> str:
    """``join_key("out", "a/b.txt")`` → ``out/a/b.txt``."""
    return normalize_key(f"{prefix}/{relative}" if prefix else relative)


def part_size_for(size: int, part_size: int = MULTIPART_SIZE) -> int:
    """The part size boto3 uses for a file: doubled until the file fits in 10,000 parts."""
    while -(-size // part_size) > MAX_PARTS:
        part_size *= 2
    return part_size


def upload_label(size: int) -> str:
    """The :func:`etag_label` of the ETag a file of ``size`` bytes gets when :class:`Storage`
    uploads it: ``"md5"`` below the multipart threshold, else its part size."""
    return MD5 if size < MULTIPART_SIZE else str(part_size_for(size))


# part sizes of other tools (aws-cli 8 MiB, rclone 5 MiB, s3cmd 15 MiB, mc 16 MiB, ...)
_COMMON_PART_SIZES = tuple(n * 1024 * 1024 for n in (5, 15, 16, 64, 100, 128))


def etag_label(size: int, etag: str) -> Optional[str]:
    """How to compute, for a local file of ``size`` bytes, an ETag comparable with ``etag``.

    ``"md5"`` for a plain ETag (a single-part upload). For a multipart ETag ``<hex>-<N>``: the part
    size, in bytes as a string, that cuts ``size`` bytes into N parts: ours (8 MiB, doubled past
    10,000 parts) if it fits, else a common part size of other tools (5, 15, 16, 64, 100, 128
    MiB), else the smallest whole number of MiB, else the smallest power of two. ``None`` if no
    part size gives N parts (then the object cannot hold this file's content).
    """
    _hex, dash, count = etag.partition("-")
    if not dash:
        return MD5
    try:
        parts = int(count)
    except ValueError:
        return None
    if parts < 1:
        return None
    smallest = -(-size // parts)
    mib = 1024 * 1024
    power_of_two = 1 << max(0, smallest - 1).bit_length()
    for part in (part_size_for(size), *_COMMON_PART_SIZES, -(-smallest // mib) * mib,
                 power_of_two, smallest):
        if part > 0 and max(1, -(-size // part)) == parts:
            return str(part)
    return None


def etag_for_label(path: Union[str, "os.PathLike[str]"], label: str) -> str:
    """The ETag of a file for a :func:`etag_label`: its MD5 for ``"md5"``, else the MD5 of the
    concatenated MD5s of its parts of ``int(label)`` bytes, then ``-<number of parts>``.

    The file is read in 1 MiB blocks (bounded memory).
    """
    with open(path, "rb") as handle:
        if label == MD5:
            digest = hashlib.md5()
            for block in iter(lambda: handle.read(_BLOCK), b""):
                digest.update(block)
            return digest.hexdigest()
        part = int(label)
        parts: list[bytes] = []
        while True:
            digest = hashlib.md5()
            left = part
            while left:
                block = handle.read(min(_BLOCK, left))
                if not block:
                    break
                digest.update(block)
                left -= len(block)
            if left == part and parts:  # nothing more to read
                break
            parts.append(digest.digest())
            if left:
                break
    return f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}"


def compute_etag(path: Union[str, "os.PathLike[str]"], part_size: int = MULTIPART_SIZE) -> str:
    """The ETag S3 gives a file uploaded by :class:`Storage` (without quotes).

    Below ``part_size`` bytes: the MD5 of the content. From ``part_size`` on (multipart
    upload): the MD5 of the concatenated part MD5s, then ``-<number of parts>``.
    """
    size = os.path.getsize(path)
    label = MD5 if size < part_size else str(part_size_for(size, part_size))
    return etag_for_label(path, label)


class ObjectInfo(str):
    """One object of a listing: the key itself (a ``str``), with its metadata as attributes.

    Because it is the key, ``sorted(bucket.list_files())`` or ``"a.txt" in bucket.list_files()``
    work on keys; ``.key``, ``.etag`` (no quotes), ``.size`` and ``.last_modified`` give the rest.
    """

    etag: str
    size: int
    last_modified: Optional[datetime]

    def __new__(cls, key: str, etag: str = "", size: int = 0,
                last_modified: Optional[datetime] = None) -> "ObjectInfo":
        obj = super().__new__(cls, key)
        obj.etag = etag
        obj.size = int(size)
        obj.last_modified = last_modified
        return obj

    @property
    def key(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        return f"ObjectInfo({str(self)!r}, etag={self.etag!r}, size={self.size})"


def denied_message(operation: str, bucket: str, prefix: Optional[str], detail: str) -> str:
    """The message of an AccessDenied on ``bucket``, naming the user's bucket prefix.

    ``prefix`` is ``bucketPrefix`` from ``GET /info``: ``""`` for an account that may use any
    bucket name, ``None`` when the server does not say.
    """
    head = f"{operation}: access denied to bucket {bucket!r}"
    if prefix is None:
        return f"{head} (AccessDenied: {detail})"
    if not prefix:
        return (f"{head}, although this account may use any bucket name (its bucketPrefix in "
                f"GET /info is empty): check the storage credentials (AccessDenied: {detail})")
    if not bucket.startswith(prefix):
        return (f"{head}: your bucket names must start with {prefix!r} (the bucketPrefix of "
                f"GET /info), for example {prefix + bucket!r}")
    return (f"{head}: your buckets are those named {prefix}*, so this one should be allowed; "
            f"check the storage credentials (AccessDenied: {detail})")
