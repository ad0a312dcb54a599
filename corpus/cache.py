"""Content-keyed cache folders: `cache_root/<key>/`, built in a temporary sibling and
renamed into place, so a crash never leaves a half-written cache that looks complete.

The key is a sha256 over the content of every input (streamed, so a 10 GB file costs
one sequential read, not 10 GB of memory) plus the format version and parameters: a
changed input always gets a new folder, and a folder is never rewritten.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from minimind.atomic import DIR_MODE

HASH_CHUNK = 4 << 20


def file_sha256(path: str | Path, advance: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
            if advance:
                advance(len(chunk))
    return digest.hexdigest()


def content_key(*parts: str) -> str:
    """One sha256 over labelled parts (each part is already a digest or a short value)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


@contextmanager
def building(cache_root: str | Path, key: str) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success rename it to `cache_root/key`.

    If another process published the same key meanwhile, its folder wins (same content,
    same key) and ours is discarded. On any error the temporary folder is removed."""
    cache_root = Path(cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=cache_root))
    os.chmod(tmp, DIR_MODE)  # mkdtemp makes 0700; a shared cache is readable like any folder
    try:
        yield tmp
        for child in tmp.iterdir():
            with open(child, "rb") as handle:
                os.fsync(handle.fileno())
        try:
            os.rename(tmp, cache_root / key)
        except OSError:
            if not (cache_root / key).is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
