"""Atomic file output, resumable run logs and the progress bar over a job's runs.

Every file this module writes is written atomically: the bytes go to a temporary file in the
destination directory, are flushed and ``fsync``-ed, and the temporary file is then moved over
the destination with :func:`os.replace`. A reader therefore sees either the old file or the
complete new one, never a half-written file, even if the writer is killed mid-write.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = atomic_write_text(d / "note.txt", "hello")
    >>> (d / "note.txt").read_text()
    'hello'
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "PathLike",
    "RunLog",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "run_grid",
]

PathLike = str | os.PathLike[str]


def _fsync_dir(directory: Path) -> None:
    """Flushes a directory entry to disk where the platform allows it (POSIX only)."""
    if os.name != "posix":  # pragma: no cover - Windows cannot open directories
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. permission quirks on network filesystems
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _atomic_write(path: PathLike, write: Any) -> Path:
    """Calls ``write(binary_file)`` on a temp file beside ``path``, then renames it to ``path``."""
    target = Path(path)
    if target.exists() and target.is_dir():
        raise ValueError(f"cannot write to {str(target)!r}: it is a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(target.parent)
    return target


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically (temp file, fsync, ``os.replace``).

    Missing parent directories are created.

    Args:
        path: Destination file.
        data: The bytes to write.

    Returns:
        The destination as a :class:`~pathlib.Path`.

    Raises:
        ValueError: If ``path`` is an existing directory.
    """
    return _atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Writes ``text`` to ``path`` atomically (temp file, fsync, ``os.replace``).

    Args:
        path: Destination file; missing parent directories are created.
        text: The text to write.
        encoding: Text encoding.

    Returns:
        The destination as a :class:`~pathlib.Path`.

    Raises:
        ValueError: If ``path`` is an existing directory.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "sub" / "a.txt"
        >>> atomic_write_text(p, "x").read_text()
        'x'
    """
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_torch_save(obj: object, path: PathLike) -> Path:
    """Saves ``obj`` with :func:`torch.save` to ``path`` atomically.

    Args:
        obj: Anything :func:`torch.save` accepts (state dicts, tensors, plain containers).
        path: Destination file; missing parent directories are created.

    Returns:
        The destination as a :class:`~pathlib.Path`.

    Raises:
        ValueError: If ``path`` is an existing directory.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.pt"
        >>> _ = atomic_torch_save({"w": torch.ones(2)}, p)
        >>> torch.load(p)["w"].tolist()
        [1.0, 1.0]
    """
    return _atomic_write(path, lambda handle: torch.save(obj, handle))


class RunLog:
    """Finished runs of a long job, one JSON line each, so that a killed job resumes.

    Each finished run is appended (and flushed) as one line of ``path``; a rerun loads them and
    skips the runs whose key is present. A line cut by a kill mid-write is ignored.

    Args:
        path: The ``.jsonl`` file.
        key_fields: Fields that identify a run (e.g. ``("method", "seed")``).

    Example:
        >>> import tempfile, pathlib
        >>> log = RunLog(pathlib.Path(tempfile.mkdtemp()) / "runs.jsonl", ("method", "seed"))
        >>> log.append({"method": "ce", "seed": 0, "acc": 91.5})
        >>> RunLog(log.path, ("method", "seed")).done({"method": "ce", "seed": 0})
        True
    """

    def __init__(self, path: PathLike, key_fields: Sequence[str]) -> None:
        self.path = Path(path)
        self.key_fields = tuple(key_fields)
        self.records: list[dict[str, Any]] = []
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    self.records.append(json.loads(line))
                except json.JSONDecodeError:  # the last line of a killed write
                    continue

    def _key(self, record: Mapping[str, Any]) -> tuple[Any, ...]:
        # A record written before a key field existed matches no run (it is rerun).
        return tuple(record.get(f) for f in self.key_fields)

    def done(self, key: Mapping[str, Any]) -> bool:
        """Whether a run with these key fields has finished."""
        wanted = self._key(key)
        return any(self._key(r) == wanted for r in self.records)

    def get(self, key: Mapping[str, Any]) -> dict[str, Any]:
        """The record of a finished run (``KeyError`` if none)."""
        wanted = self._key(key)
        for record in self.records:
            if self._key(record) == wanted:
                return record
        raise KeyError(wanted)

    def append(self, record: dict[str, Any]) -> None:
        """Records a finished run (one line, flushed and synced)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.records.append(record)


def run_grid(
    names: Sequence[str], *axes: Iterable[Any], desc: str, enabled: bool = True
) -> Iterator[tuple[Any, ...]]:
    """Every combination of ``axes`` (the first varies slowest) behind a tqdm progress bar that
    shows the current combination, e.g. the ``(method, seed)`` runs of a job.

    Args:
        names: One name per axis, shown in the bar.
        axes: The values of each axis.
        desc: The bar's label (the job's name).
        enabled: Show the bar (e.g. ``progress and is_main_process()``).

    Example:
        >>> list(run_grid(["method", "seed"], ["ce", "hug"], [0, 1], desc="demo", enabled=False))
        [('ce', 0), ('ce', 1), ('hug', 0), ('hug', 1)]
    """
    import itertools

    from tqdm.auto import tqdm

    if len(names) != len(axes):
        raise ValueError(f"one name per axis: {len(names)} names for {len(axes)} axes")
    points = list(itertools.product(*axes))
    with tqdm(total=len(points), desc=desc, unit="run", disable=not enabled) as bar:
        for point in points:
            bar.set_postfix(dict(zip(names, point, strict=True)))
            yield point
            bar.update(1)
