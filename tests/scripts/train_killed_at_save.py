"""Run tools/train.py and SIGKILL this process while it writes a given checkpoint.

    python tests/scripts/train_killed_at_save.py NAME -- TRAIN_ARGS...

An audit hook watches ``open`` events: the first file opened for writing whose name contains
NAME (``epoch_3.pth`` itself under mmengine's hook, ``.epoch_3.pth.*.partial`` under an atomic
one) starts a thread that kills the process with SIGKILL as soon as that file holds data, i.e. in
the middle of the write (the write releases the GIL). Exits by SIGKILL (-9) when NAME was written,
normally otherwise.
"""
import os
import os.path as osp
import runpy
import signal
import sys
import threading

TRAIN = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'tools',
                 'train.py')


def kill_when_written(path: str) -> None:
    while True:
        try:
            if os.stat(path).st_size > 0:
                break
        except FileNotFoundError:
            pass
    os.kill(os.getpid(), signal.SIGKILL)


def install(name: str) -> None:
    armed = [True]

    def hook(event, args):
        if event != 'open' or not armed[0] or not isinstance(args[0], (str, bytes)):
            return
        path = os.fsdecode(args[0])
        mode, flags = args[1], args[2]
        writing = (isinstance(mode, str) and 'w' in mode) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR))
        if writing and name in osp.basename(path):
            armed[0] = False
            threading.Thread(target=kill_when_written, args=(path, ), daemon=True).start()

    sys.addaudithook(hook)


if __name__ == '__main__':
    target, sep, *train_args = sys.argv[1:]
    assert sep == '--', __doc__
    install(target)
    sys.argv = [TRAIN] + train_args
    runpy.run_path(TRAIN, run_name='__main__')
