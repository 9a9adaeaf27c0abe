import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
torch.set_num_threads(1)  # tiny models: one thread is fastest and keeps runs bit-exact


@pytest.fixture
def hold_run_lock():
    """hold(folder, run, pid): take OUT/.<run>.lock as a running first process would, writing its pid."""
    import fcntl
    held = []

    def hold(folder, run, pid):
        os.makedirs(folder, exist_ok=True)
        f = open(os.path.join(folder, f".{run}.lock"), "a+")
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.write(f"pid {pid}\n")
        f.flush()
        held.append(f)
        return f
    yield hold
    for f in held:
        f.close()
