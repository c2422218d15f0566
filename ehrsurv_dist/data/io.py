"""Filesystem helpers: local paths or any pyarrow filesystem URI (writes: ``ehrsurv_dist.atomic``)."""

from __future__ import annotations

import os

import pyarrow.fs as pafs


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Return the pyarrow filesystem and the path inside it for a local path or URI.

    ``/data/cohort`` and ``relative/cohort`` are local; ``s3://bucket/cohort``,
    ``gs://...``, ``hdfs://...`` or ``file:///...`` go through ``pyarrow.fs.FileSystem.from_uri``.
    """
    if "://" in uri:
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def join(root: str, *parts: str) -> str:
    """Join path parts with '/', the separator of every pyarrow filesystem."""
    return "/".join([root.rstrip("/"), *[p.strip("/") for p in parts]])


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return bool(fs.get_file_info(path).type != pafs.FileType.NotFound)


def list_files(fs: pafs.FileSystem, root: str) -> list[str]:
    """All regular files below ``root`` (recursive), sorted; [] if ``root`` does not exist."""
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)
