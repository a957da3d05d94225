"""Atomic file writes: write to a temporary file beside the target, fsync, then rename into place.

A crash or ``kill -9`` at any moment leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from cliplab.errors import CliplabError

__all__ = [
    "atomic_dir",
    "atomic_path",
    "atomic_write",
    "fsync_dir",
    "fsync_tree",
    "is_debris",
    "lock_folder",
    "write_json",
    "write_text",
]


def fsync_dir(path: Path) -> None:
    """A rename or removal in ``path`` on disk."""
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(path: Path) -> None:
    """Every file and folder under ``path`` on disk (a file's name lives in its folder), before the folder
    is renamed into place."""
    for f in sorted(path.rglob("*"), key=lambda p: -len(p.parts)):  # deepest first, then the folders above
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        elif f.is_dir():
            fsync_dir(f)
    fsync_dir(path)


def is_debris(path: Path) -> bool:
    """A temporary file of :func:`atomic_path` (``.NAME.XXXX.tmp``) or of ``tempfile`` (``.tmpXXXX``) that a
    kill left behind."""
    return path.name.startswith(".") and (path.name.endswith(".tmp") or path.name.startswith(".tmp"))


def _nearly_full(folder: Path) -> bool:
    """Under 64 MiB free: a writer's failure there is taken for a full disk, which it reports in its own way."""
    try:
        return shutil.disk_usage(folder).free < 64 * 2**20
    except OSError:
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    For writers that insist on a file name (``safetensors.torch.save_file``, ``faiss.write_index``).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    except OSError as err:  # a read-only or full folder: name the user's path, not the temporary file
        raise OSError(err.errno, err.strerror, str(target)) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except Exception as err:  # torch.save, safetensors and faiss report a full disk as their own errors
            if not isinstance(err, OSError | CliplabError) and _nearly_full(target.parent):
                raise OSError(errno.ENOSPC, f"no space left on the device ({type(err).__name__}: "
                                            f"{str(err).splitlines()[0][:120] if str(err) else ''})",
                              str(target)) from err
            raise
        # mkstemp makes 0600, and writers that replace the file with their own temporary one keep theirs:
        # give the finished file the usual mode
        os.chmod(tmp_path, 0o666 & ~_umask())
        with open(tmp_path, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.replace(tmp_path, target)
        except OSError as err:  # name the user's path, not the temporary file
            raise OSError(err.errno, err.strerror, str(target)) from None
        fsync_dir(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path`` (a folder, whose old
    contents go). A kill leaves the old folder, the new one, or (between two renames) none, with the old
    one under a dot-name beside it: never a mix of the two. The next write puts that old one back first."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    work, old = target.parent / f".{target.name}.tmp-new", target.parent / f".{target.name}.tmp-old"
    if old.is_dir() and not target.exists():  # killed between the renames: the last good folder returns
        os.replace(old, target)
    for leftover in (work, old):  # of a write a kill cut short
        shutil.rmtree(leftover, ignore_errors=True)
    work.mkdir()
    try:
        yield work
        fsync_tree(work)
        if target.exists():
            os.replace(target, old)
        os.replace(work, target)
        fsync_dir(target.parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; it replaces ``path`` only if the block finishes."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def lock_folder(folder: str | os.PathLike[str], name: str, busy: str) -> IO[str] | None:
    """Lock ``folder / name`` (the folder created if needed) for this process: ``flock`` on a file holding the
    pid, which the kernel drops however the process ends. Keep the returned file open while the work lasts.
    A second locker gets ``"{folder}: {busy}"`` with ``{pid}`` filled in (empty when the file holds none).
    ``None`` where ``flock`` does not exist."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / name, "a+", encoding="utf-8")  # noqa: SIM115 (held open while the work lasts)
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        pid = fh.read().strip()
        fh.close()
        raise CliplabError(f"{folder}: " + busy.format(pid=f" (pid {pid})" if pid else "")) from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh
