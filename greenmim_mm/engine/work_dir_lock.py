"""One live training run per work dir: an OS lock (``fcntl.flock``) on
``<work_dir>/.greenmim_mm.lock``.


Two runs writing one work dir silently lose data: both save ``epoch_N.pth`` under the same names,
rewrite ``last_checkpoint``, remove each other's old checkpoints (``max_keep_ckpts``), and the
start-up sweep of one removes the other's temporary files. The lock is taken before anything is
written (``tools/train.py`` before the Runner is built; :class:`SafeCheckpointHook` in
``before_run`` for programmatic runners) and held until the run ends; the kernel releases it when
the process dies (a kill, a crash), so a stale lock never blocks the next run. The lock file holds
the holder's ``pid@host`` for the message of a refused run and is never removed (removing a lock
file lets two runs lock two different files).

The lock is per process: a second Runner of the same process in the same work dir (tests, a
notebook) reuses it. ``flock`` works on local file systems and on NFS v4 (Linux emulates it with
POSIX locks there).
"""
import errno
import fcntl
import os
import os.path as osp
import socket
import stat
from typing import Dict

LOCK_NAME = '.greenmim_mm.lock'
_HELD: Dict[str, int] = {}  # realpath of the work dir -> fd of its lock file


class WorkDirBusyError(RuntimeError):
    """Another live run holds the work dir's lock."""


class LockFileError(WorkDirBusyError):
    """The work dir's lock file is not a plain file of its own (a symlink, a hard link, a
    directory, e.g. planted in a shared or unpacked work dir): writing the holder into it would
    overwrite another file."""


def lock_work_dir(work_dir: str) -> None:
    """Take ``work_dir``'s lock for this process (created if needed; a no-op if already held).

    Raises:
        WorkDirBusyError: another live process holds it; the message names its pid and host.
        LockFileError: the lock file is a symlink, a hard link of another file or not a regular
            file (never followed nor written).
    """
    os.makedirs(work_dir, exist_ok=True)
    key = osp.realpath(work_dir)
    if key in _HELD:
        return
    path = osp.join(key, LOCK_NAME)
    fd = _open_own_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = _read_holder(fd)
        os.close(fd)
        if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        raise WorkDirBusyError(
            f'work dir {work_dir} is in use by another run ({holder}, lock file {path}); '
            'wait for it to finish or choose another --work-dir') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'pid {os.getpid()} on host {socket.gethostname()}\n'.encode(), 0)
    _HELD[key] = fd


def unlock_work_dir(work_dir: str) -> None:
    """Release this process's lock on ``work_dir`` (a no-op if it holds none)."""
    fd = _HELD.pop(osp.realpath(work_dir), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)  # forked children (data loader workers) share the lock
        os.close(fd)


def holds_work_dir(work_dir: str) -> bool:
    """Whether this process holds ``work_dir``'s lock."""
    return osp.realpath(work_dir) in _HELD


def _open_own_file(path: str) -> int:
    """A read-write descriptor of ``path`` (created if absent), refusing a symlink (not
    followed: ``O_NOFOLLOW``), a hard link (more than one name) and anything not a regular file.

    Raises:
        LockFileError: naming ``path`` and what it is.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as err:
        if err.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise
        kind = 'a symlink' if osp.islink(path) else 'not a regular file'
        raise LockFileError(f'lock file {path} is {kind}; it is never followed or written: '
                            'remove it (or choose another --work-dir)') from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        kind = (f'a hard link ({info.st_nlink} names share its data)'
                if stat.S_ISREG(info.st_mode) else 'not a regular file')
        raise LockFileError(f'lock file {path} is {kind}; it is never written: remove it (or '
                            'choose another --work-dir)')
    return fd


def _read_holder(fd: int) -> str:
    text = os.pread(fd, 200, 0).decode('utf-8', 'replace').strip()
    return text or 'pid unknown'
