"""The project's own files, as the tests read them: what git tracks, so that a venv, an out/ folder or any other
untracked folder inside the checkout is never read as part of the project. Without git (an unpacked archive),
the top-level files and the files under the project's own folders (FOLDERS)."""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = ("checkpoints", "docs", "formats", "research", "scale", "tests", "viz", "walkthrough")


def fixed_list(root=ROOT):
    """Top-level files and every file under FOLDERS (relative paths): the fallback when git is missing."""
    files = [f for f in os.listdir(root) if os.path.isfile(os.path.join(root, f))]
    for top in FOLDERS:
        for folder, dirs, names in os.walk(os.path.join(root, top)):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
            files += [os.path.relpath(os.path.join(folder, n), root) for n in names]
    return files


def git_files(root=ROOT):
    """Paths git tracks under root, or None when git (or the repository) is missing."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return [f for f in out.decode("utf-8").split("\0") if f]


def project_files(*suffixes, root=ROOT, use_git=True):
    """Sorted relative paths (with "/") of the project's files ending in one of `suffixes` (all without)."""
    files = (git_files(root) if use_git else None) or fixed_list(root)
    files = {f.replace(os.sep, "/") for f in files if os.path.isfile(os.path.join(root, f))}
    return sorted(f for f in files if not suffixes or f.endswith(tuple(suffixes)))
