"""The CE-only twin of a phase-2 KD run, trained side by side in a second process on the same windows.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) claims that KD transfers long-range retrieval that
CE on the same short documents does not; every KD run therefore trains its CE-only twin next to it (one
thread each on a CPU) and ends with the two side by side. train.py's main plans, starts and finishes it.
"""
import os
import subprocess
import sys

import torch

from config import build_parser, fail, resolve
from scale import dist

TRAIN_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train.py")


def wants_twin(args) -> bool:
    """Phase 2's KD run trains its CE-only twin side by side (the other --arm values train alone)."""
    return args.phase == "2" and args.arm == "kd" and not args.no_baseline


def plan_twin(args, argv):
    """The CE-only twin: (its name, its argv, its resolved args); argv and args None when its results exist."""
    ce_argv = argv + ["--kd-weight", "0", "--arm", "ce", "--no-baseline", "--no-auto"]
    # its own default name (a CE run has no divergence or temperature to name), or --run-name's with kd -> ce
    named = any(a == "--run-name" or a.startswith("--run-name=") for a in argv)
    ce_name = (resolve(build_parser().parse_args(ce_argv)).run_name if not named else
               args.run_name.replace("-kd-", "-ce-") if "-kd-" in args.run_name else args.run_name + "-ce")
    if os.path.isfile(os.path.join(args.out_dir, ce_name + ".json")) and not args.overwrite:
        return ce_name, None, None
    ce_argv += ["--run-name", ce_name]
    if args.device == "cpu" and not args.threads:
        ce_argv += ["--threads", "1"]
    return ce_name, ce_argv, resolve(build_parser().parse_args(ce_argv))


def start_twin(args, plan):
    """The twin as a side process (1 thread each on CPU), unless it already exists; None without a twin.
    Under torchrun a twin would be a second job inside this one's process group, so it is only planned."""
    if plan is None or dist.world_size() > 1:
        return None
    ce_name, ce_argv, _ = plan
    if ce_argv is None:
        print(f"baseline {ce_name} already trained: reusing it")
        return None
    log = os.path.join(args.out_dir, ce_name + ".log")
    os.makedirs(args.out_dir, exist_ok=True)
    if args.device == "cpu" and not args.threads:
        torch.set_num_threads(1)
    print(f"baseline: training the CE-only twin {ce_name} side by side (log: {log})")
    return subprocess.Popen([sys.executable, TRAIN_PY] + ce_argv, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def finish_twin(args, plan, proc, results, print_side_by_side):
    """Wait for the twin, then print the KD-vs-CE table (under torchrun: the twin's command, if not yet run)."""
    if plan is None or not dist.is_main():
        return
    ce_name, ce_argv, _ = plan
    if proc is not None and proc.wait() != 0:
        fail(f"the CE baseline failed; see {os.path.join(args.out_dir, ce_name + '.log')}")
    if proc is None and ce_argv is not None:  # under torchrun
        print(f"\nthe CE-only twin {ce_name} is not trained under torchrun; train it as its own job, then run "
              f"this one again (--resume) for the side-by-side table:\n  torchrun --nproc_per_node "
              f"{dist.world_size()} train.py {' '.join(ce_argv)}")
        return
    print_side_by_side(args, results, ce_name)
