"""Run tools/train.py and SIGKILL this process in the middle of writing a given checkpoint.

    python tests/scripts/train_killed_at_save.py NAME -- TRAIN_ARGS...

``open`` (builtins and ``io``, which ``os.fdopen`` uses) is wrapped: the first file opened for
writing whose name contains NAME (``epoch_3.pth`` itself under mmengine's ``CheckpointHook``,
``.epoch_3.pth.<random>.partial`` under an atomic writer) gets half of its first write, flushed
to the file system, and then the process kills itself with SIGKILL: deterministically a kill
while the new file exists and is incomplete, whatever the machine's load. Exits by SIGKILL (-9)
when NAME was written, normally otherwise.
"""
import builtins
import io
import os
import os.path as osp
import runpy
import signal
import sys

TRAIN = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'tools',
                 'train.py')


class _HalfThenKill:
    """A binary file whose first ``write`` writes half the data, then SIGKILLs the process."""

    def __init__(self, f):
        self._f = f

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)

    def write(self, data):
        data = memoryview(data).cast('B')
        self._f.write(data[:max(1, len(data) // 2)])
        self._f.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def install(name: str) -> None:
    real_open = io.open
    armed = [True]

    def open_(file, mode='r', *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        path = os.readlink(f'/proc/self/fd/{file}') if isinstance(file, int) else os.fspath(file)
        if armed[0] and 'w' in mode and 'b' in mode and name in osp.basename(os.fsdecode(path)):
            armed[0] = False
            return _HalfThenKill(f)
        return f

    builtins.open = io.open = open_


if __name__ == '__main__':
    target, sep, *train_args = sys.argv[1:]
    assert sep == '--', __doc__
    install(target)
    sys.argv = [TRAIN] + train_args
    sys.path.insert(0, os.path.dirname(TRAIN))  # as python does for a script (tools/_light.py)
    runpy.run_path(TRAIN, run_name='__main__')
