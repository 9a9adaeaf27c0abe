"""Every seed the repository records as used, so that a new protocol can draw seeds no earlier run touched.

A seed counts as used when any of these names it: a key containing "seed" in a committed JSON (docs/, research/notes/,
checkpoints/),
a `--seed N` / `--phase1-seed N` / `--phase1-seeds N M ...` flag or a "seed N" / "seeds N-M" phrase in the docs, the
research scripts or a commit message. A phase-1 run with `--retries` retrained with --seed + 1000 k, so every used
seed s also marks s + 1000 k (k = 1 .. 9) as used.

    python -m research.used_seeds                  # the used seeds
    python -m research.used_seeds --check 100 101  # also: are these disjoint from them? (exit 1 if not)
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RETRY_STRIDE = 1000  # the retry stride of the first recipe's --retries
FLAG = re.compile(r"--(?:phase1-)?seeds?((?:\s+\d+)+)")
PHRASE = re.compile(r"\bseeds?\s+(\d+)(?:\s*(?:-|–|to)\s*(\d+))?", re.I)


def json_seeds(obj, key=""):
    """Integers stored under a key that contains "seed", anywhere in a JSON value."""
    if isinstance(obj, dict):
        return {s for k, v in obj.items() for s in json_seeds(v, k)}
    if isinstance(obj, list):
        return {s for v in obj for s in json_seeds(v, key)}
    if isinstance(obj, int) and not isinstance(obj, bool) and "seed" in key.lower():
        return {obj}
    return set()


def text_seeds(text):
    """Seeds a text names: flags (--seed 3, --phase1-seeds 0 1 2) and phrases (seed 7, seeds 12-24)."""
    found = set()
    for m in FLAG.finditer(text):
        found |= {int(s) for s in m.group(1).split()}
    for m in PHRASE.finditer(text):
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        if hi - lo <= 100:  # a range of seeds, not a year or a step count
            found |= set(range(lo, hi + 1))
    return found


def commit_messages(root):
    try:
        out = subprocess.run(["git", "log", "--format=%B"], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return ""
    return out.stdout


def used_seeds(root=ROOT):
    """Sorted list of every seed the repository records as used, retry-derived seeds included."""
    seeds = set()
    folders = [os.path.join(root, "docs"), os.path.join(root, "research", "notes")]
    jsons = [p for folder in folders for p in glob.glob(os.path.join(folder, "**", "*.json"), recursive=True)]
    for path in jsons + glob.glob(os.path.join(root, "checkpoints", "*.json")):
        with open(path) as f:
            seeds |= json_seeds(json.load(f))
    texts = [p for folder in folders for p in glob.glob(os.path.join(folder, "**", "*.md"), recursive=True)]
    texts += glob.glob(os.path.join(root, "*.md")) + glob.glob(os.path.join(root, "research", "*.py"))
    for path in texts:
        if os.path.basename(path) in ("protocol.md", "used_seeds.py"):
            continue  # the protocol's own seeds are what is checked, not what was used
        with open(path, encoding="utf-8") as f:
            seeds |= text_seeds(f.read())
    seeds |= text_seeds(commit_messages(root))
    seeds |= {s + RETRY_STRIDE * k for s in list(seeds) for k in range(1, 10)}
    return sorted(seeds)


def main(argv=None):
    p = argparse.ArgumentParser(description="Print every seed the repository records as used; with --check, "
                                "whether the given seeds avoid them all.")
    p.add_argument("--check", type=int, nargs="*", default=[], help="seeds that must not have been used")
    args = p.parse_args(argv)
    used = used_seeds()
    small = [s for s in used if s < RETRY_STRIDE]
    print(f"{len(used)} used seeds; below {RETRY_STRIDE}: {small}; the rest are those + 1000 k (k = 1..9)")
    clash = sorted(set(args.check) & set(used))
    if args.check:
        print(f"checked {len(args.check)} seeds: " + (f"already used: {clash}" if clash else "none of them was used"))
    if clash:
        sys.exit(1)


if __name__ == "__main__":
    main()
