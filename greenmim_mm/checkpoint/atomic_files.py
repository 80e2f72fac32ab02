"""Atomic file writing: a file appears under its name complete, or not at all.

Every file greenmim_mm writes (training checkpoints, ``last_checkpoint``, converted weights) goes
to a temporary file in the destination's directory
(``.<name>.greenmim_mm-tmp-<pid>-<random>.partial``: a name no user file has, with the writer's
pid), is flushed and ``fsync``-ed, then renamed over the destination with ``os.replace`` (atomic
on POSIX within one file system) and the directory is ``fsync``-ed. A crash or kill at any moment
leaves either the old file or the new one under the name, never a partial one; a failed write
(full disk) removes its temporary file and leaves the old file intact. ``AtomicLocalBackend``
brings this to mmengine's file I/O (``backend_args=dict(backend='greenmim_mm_atomic_local')``),
which :class:`greenmim_mm.engine.SafeCheckpointHook` uses for every checkpoint it saves.
"""
import contextlib
import io
import os
import os.path as osp
import re
import tempfile
from typing import Callable, List, Union

import torch
from mmengine.fileio import LocalBackend, register_backend

PARTIAL_SUFFIX = '.partial'
ATOMIC_BACKEND = 'greenmim_mm_atomic_local'
PARTIAL_TAG = 'greenmim_mm-tmp'
_PARTIAL_NAME = re.compile(r'^\..+\.' + re.escape(PARTIAL_TAG) + r'-(\d+)-[A-Za-z0-9_]+'
                           + re.escape(PARTIAL_SUFFIX) + '$')


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open(path, 'w') would give


def _fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Union[str, os.PathLike], write: Callable[[io.BufferedWriter], None]
                 ) -> None:
    """Call ``write(f)`` on a temporary file next to ``path``, then rename it to ``path``.

    Raises whatever ``write`` or the file system raises (e.g. ``OSError`` ENOSPC on a full disk)
    after removing the temporary file; ``path`` then still holds its previous content, if any.
    """
    path = os.fspath(path)
    directory = osp.dirname(osp.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(path)}.{PARTIAL_TAG}-{os.getpid()}-',
                               suffix=PARTIAL_SUFFIX, dir=directory)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def atomic_write_bytes(path: Union[str, os.PathLike], data: Union[bytes, memoryview]) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Union[str, os.PathLike], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write_bytes(path, text.encode('utf-8'))


def atomic_torch_save(obj, path: Union[str, os.PathLike]) -> None:
    """``torch.save(obj, path)``, atomically.

    The object is serialised in memory first (as mmengine's ``save_checkpoint`` does), so a disk
    error surfaces as a plain ``OSError`` from the file write, not from torch's zip writer.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


def partial_files(directory: str) -> List[str]:
    """The temporary files of :func:`atomic_write` in ``directory`` (writes in progress, and
    those a process killed mid-write left), by their name only greenmim_mm gives."""
    if not osp.isdir(directory):
        return []
    return sorted(osp.join(directory, n) for n in os.listdir(directory) if _PARTIAL_NAME.match(n))


def stale_partial_files(directory: str) -> List[str]:
    """:func:`partial_files` whose writer is dead: no process of this host has the pid in the
    name (a file of a live writer, e.g. a converter writing into the work dir, is kept)."""
    return [p for p in partial_files(directory)
            if not _pid_alive(int(_PARTIAL_NAME.match(osp.basename(p)).group(1)))]


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@register_backend(ATOMIC_BACKEND, force=True)
class AtomicLocalBackend(LocalBackend):
    """mmengine's ``LocalBackend`` whose ``put``/``put_text`` write atomically."""

    def put(self, obj: bytes, filepath: Union[str, os.PathLike]) -> None:
        os.makedirs(osp.dirname(osp.abspath(filepath)), exist_ok=True)
        atomic_write_bytes(filepath, obj)

    def put_text(self, obj: str, filepath: Union[str, os.PathLike], encoding: str = 'utf-8'
                 ) -> None:
        os.makedirs(osp.dirname(osp.abspath(filepath)), exist_ok=True)
        atomic_write_bytes(filepath, obj.encode(encoding))


def is_same_file(a: Union[str, os.PathLike], b: Union[str, os.PathLike]) -> bool:
    """Whether ``a`` and ``b`` name one existing file, however spelled (``..``, symlinks, hard
    links: ``os.path.samefile`` compares device and inode)."""
    return osp.exists(a) and osp.exists(b) and osp.samefile(a, b)
