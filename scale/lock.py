"""One process per run: a second process asked to train the same run into the same folder refuses.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) trains in phases, each from the checkpoints of the one
before, often several runs at once on one machine (a KD student beside its CE-only twin, several phase-1 seeds);
train.py holds this lock around a run so that two processes never write one run's checkpoint and step log.
"""
import fcntl
import os

from config import check_out_dir, fail
from scale import dist


class RunLock:
    """An exclusive lock on OUT/.<run>.lock from before the run's inputs are read until it ends: a second process
    asked to train the same run into the same folder refuses in one line instead of checking, then overwriting,
    the first one's checkpoint and log. The kernel drops the lock when the process ends, however it ends, so a
    killed run never leaves it stale. The lock file goes when the run ends, and the folder too if the lock made
    it and nothing else was written there (bad input writes nothing)."""

    def __init__(self, args):
        self.folder = args.out_dir
        self.path = os.path.join(args.out_dir, f".{args.run_name}.lock")
        self.run, self.file, self.made_folder = args.run_name, None, False

    def __enter__(self):
        problem = self.take() if dist.is_main() else None  # rank 0 alone holds it
        if dist.any_rank(problem is not None):  # under torchrun every rank stops with rank 0
            if problem == "":  # already said in one line
                raise SystemExit(2)
            fail(problem or f"rank 0 could not take the lock of {self.run}")
        return self

    def take(self):
        """Take the lock (None), or say in one line why not ("" when check_out_dir already said it)."""
        try:
            check_out_dir(self.folder, "--out-dir")
        except SystemExit:
            return ""
        self.made_folder = not os.path.isdir(self.folder)
        os.makedirs(self.folder, exist_ok=True)
        while self.file is None:
            f = open(self.path, "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                f.close()
                return (f"{self.run} is being trained in {self.folder} by {holder}: wait for it, or choose "
                        f"another --out-dir or --run-name")
            if same_file(f, self.path):  # not a file its last holder removed while this one opened it
                self.file = f
            else:
                f.close()
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()}\n")
        self.file.flush()
        return None

    def __exit__(self, *exc):
        if self.file is None:
            return
        try:
            os.remove(self.path)  # removed while still held: a process that opened it meanwhile opens it again
        except FileNotFoundError:
            pass
        self.file.close()  # closing releases the lock
        if self.made_folder and not os.listdir(self.folder):
            os.rmdir(self.folder)


def same_file(f, path) -> bool:
    """Whether the open file f is the file at `path` now (same inode)."""
    try:
        return os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
