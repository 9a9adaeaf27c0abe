"""The project's own files, as the tests read them: what git tracks, so that a venv, an out/ folder or any other
untracked folder inside the checkout is never read as part of the project. Without git (an unpacked archive), the
files on disk under the checkout, but hidden folders, what .gitignore names (out/, caches) and Python environments
(a folder holding pyvenv.cfg): found on disk, so a new folder of the project is read without being listed."""
import fnmatch
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ignore_patterns(root=ROOT) -> list:
    """The patterns of the checkout's .gitignore (none without one), without their trailing "/"."""
    try:
        with open(os.path.join(root, ".gitignore"), encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except OSError:
        return []
    return [line.rstrip("/") for line in lines if line and not line.startswith(("#", "!"))]


def ignored(path, patterns) -> bool:
    """Whether a .gitignore pattern names this relative path ("/"-separated): a pattern with a "/" inside matches
    the whole path, one without matches its last part (git's rule for the simple patterns this project uses)."""
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(path if "/" in p else name, p) for p in patterns)


def project_folder(path, root, patterns) -> bool:
    """Whether the folder at this relative path ("/"-separated) holds project files: not hidden, not ignored, not a
    Python environment."""
    hidden = path.rsplit("/", 1)[-1].startswith(".")
    environment = os.path.isfile(os.path.join(root, path, "pyvenv.cfg"))
    return not hidden and not environment and not ignored(path, patterns)


def fixed_list(root=ROOT):
    """Every file of the checkout but those under a folder that is not project_folder and those .gitignore names
    (relative paths): the fallback when git is missing."""
    patterns = ignore_patterns(root)
    files = []
    for folder, dirs, names in os.walk(root):
        rel = os.path.relpath(folder, root).replace(os.sep, "/")
        prefix = "" if rel == "." else rel + "/"
        dirs[:] = [d for d in dirs if project_folder(prefix + d, root, patterns)]
        files += [prefix + n for n in names if not ignored(prefix + n, patterns)]
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
