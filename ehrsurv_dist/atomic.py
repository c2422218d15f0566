"""The one atomic writer: every file the package writes goes through here.

A file is written to a temporary name in its target folder (``.tmp-<name>-XXXX``) and renamed
over the target only once it is complete (``os.replace`` is atomic on POSIX within a folder), so
a reader — or a crash half-way — never leaves or sees a half-written file. On failure the
temporary file is removed and the target keeps its old content.

Kinds: text, JSON, Parquet, an Arrow IPC file, a torch object, and a matplotlib figure as PNG; and a whole folder
(:func:`atomic_dir`). Local paths only;
remote stores (``s3://``) are written whole by pyarrow's filesystems, which are atomic per object.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

TMP_PREFIX = ".tmp-"  # temporary files start with this; readers of folders skip dot-files


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    The target's folder is created if missing.
    """
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target)) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=TMP_PREFIX, suffix="-" + os.path.basename(target), dir=directory
    )
    os.close(fd)
    # mkstemp creates the file 0600; give the result the mode a plain open() would (0666 less
    # the umask), so outputs stay readable by the group/others as the user's umask intends.
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temporary folder next to ``path``; on success it replaces ``path`` whole.

    A reader sees the old folder or the new one (each swap is one ``os.replace``; between the
    two, for an instant, no folder): never a folder with some files written. On failure the
    temporary folder is removed and ``path`` is left as it was.
    """
    import shutil

    target = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    name = os.path.basename(target)
    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, suffix="-" + name, dir=parent)
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        old = None
        if os.path.exists(target):
            old = tempfile.mkdtemp(prefix=TMP_PREFIX + "old-", suffix="-" + name, dir=parent)
            os.replace(target, old)  # onto the empty folder mkdtemp made
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(data: bytes, path: str | os.PathLike[str], fsync: bool = False) -> None:
    """Write ``data`` atomically; ``fsync`` flushes it to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def write_text(text: str, path: str | os.PathLike[str], fsync: bool = False) -> None:
    """Write UTF-8 ``text`` atomically."""
    write_bytes(text.encode("utf-8"), path, fsync=fsync)


def write_json(obj: Any, path: str | os.PathLike[str], sort_keys: bool = False) -> None:
    """Write ``obj`` as indented JSON (numpy scalars and datetimes allowed) atomically."""
    text = json.dumps(obj, indent=2, sort_keys=sort_keys, default=json_default) + "\n"
    write_text(text, path)


def write_parquet(table: Any, path: str | os.PathLike[str]) -> None:
    """Write a pyarrow Table as one Parquet file atomically."""
    import pyarrow.parquet as pq  # local: keeps this module free of heavy imports for its users

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_arrow(table: Any, path: str | os.PathLike[str]) -> None:
    """Write a pyarrow Table as one Arrow IPC file (schema metadata kept) atomically."""
    import pyarrow as pa  # local: keeps this module free of heavy imports for its users

    with atomic_path(path) as tmp, pa.OSFile(tmp, "wb") as f:
        with pa.ipc.new_file(f, table.schema) as w:
            w.write_table(table)


def write_torch(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` ``obj`` atomically."""
    import torch  # local: only writers of torch files pay for the import

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_png(fig: Any, path: str | os.PathLike[str], dpi: int = 100) -> str:
    """Render a matplotlib figure to ``path`` as PNG atomically (Agg canvas, no display).

    Returns:
        The target path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # attach the Agg canvas explicitly
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    return os.fspath(path)


def json_default(o: Any) -> Any:
    """JSON fallback for numpy scalars (``.item()``) and dates (``.isoformat()``)."""
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "isoformat"):
        return o.isoformat()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
