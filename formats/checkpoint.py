"""Checkpoint files written whole or not at all, and read back without running code or trusting them.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) trains in phases, each starting from the
checkpoints of the one before (a teacher, a phase-1 student, its phase-2 extension); a run that is
killed, or a file that is cut short or hostile, must not silently change what the next phase starts from.

- `atomic_write`: every file this project writes that a later step reads (checkpoints, results JSON,
  tables, the step log when it is rewritten): a temp file, fsync, rename. A kill leaves the old file or the new.
- `load_checkpoint`: torch.load(weights_only=True) after the archive's checksums, one-line CheckpointError.
- `check_config`: a stored model config's types and sizes against bounds, before anything is built from it
  (model.load_model then compares it with the tensors' shapes).
"""
import math
import os
import pickle
import re
import shutil
import tempfile
import warnings
import zipfile

import torch


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, hostile or of the wrong kind."""


class FormatError(CheckpointError):
    """A model file or folder this project cannot read (or a model it cannot write) exactly (formats/hf.py,
    formats/gguf.py)."""


CHECKPOINT_KEYS = ("model", "config", "step")


def atomic_write(path: str, write, mode: str = "wb"):
    """Write `path` atomically: write(f) into a temp file in the same folder, flush + fsync, rename over `path`.

    A kill at any moment leaves either the old or the new file, never a truncated one. The file gets the
    permissions a plain open() would give (0666 less the umask), not the temp file's private 0600.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_folder(out_dir: str, files: dict):
    """Write {name: callable(path)} into a temp folder beside out_dir, then rename it into place (replacing what
    was there): a failure or a kill leaves no half-written folder."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-hf-")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        for name, write in files.items():
            write(os.path.join(tmp, name))
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        elif os.path.exists(out_dir):
            os.remove(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_checkpoint(obj: dict, path: str):
    """Atomic save of a checkpoint dict (atomic_write)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def archive_problem(path: str) -> str | None:
    """What keeps `path` from being a sound torch.save archive, in words; None if it is one.

    torch.save writes a zip archive whose members carry CRC-32 checksums, so a file cut
    short or with flipped bytes is found here, before any of it is unpickled.
    """
    size = os.path.getsize(path)
    if size == 0:
        return "is empty (0 bytes), not a checkpoint"
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":  # the zip signature every torch.save file starts with
        return f"is not a checkpoint of this project ({size:,} bytes that are not a torch.save archive)"
    try:
        with zipfile.ZipFile(path) as z:
            if not any(name.endswith("/data.pkl") for name in z.namelist()):
                return (f"is not a checkpoint of this project (a zip archive of {size:,} bytes without "
                        f"torch.save's data.pkl)")
            bad = z.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError):
        return f"is truncated or corrupt ({size:,} bytes: the end of the archive is missing or damaged)"
    if bad is not None:
        return f"is corrupt ({size:,} bytes: its member {bad} fails the checksum)"
    return None


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """torch.load with weights_only=True (loading never runs code), then check what came back.

    Every failure is a CheckpointError that says in one line what is wrong with the file.
    """
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    problem = archive_problem(path)
    if problem:
        raise CheckpointError(f"{path} {problem}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols: not the user's business
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # the weights-only unpickler met something it will not build
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(f"{path} holds objects other than tensors and plain data{what}: refused for "
                              f"safety, nothing in it was run") from None
    except Exception as e:  # a sound archive that still does not load
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise CheckpointError(f"{path} is corrupt ({os.path.getsize(path):,} bytes): {type(e).__name__}"
                              + (f": {first}" if first and "weights_only" not in first else "")) from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CHECKPOINT_KEYS):
        raise CheckpointError(f"{path} is not a checkpoint of this project (a torch.save file without the keys "
                              f"{', '.join(CHECKPOINT_KEYS)})")
    return ckpt


# Sizes a stored config may declare: far above any model this project trains or loads (formats/hf.py has the same
# for config.json), far below what would exhaust memory before the tensors' own shapes are compared.
CONFIG_BOUNDS = {"vocab_size": (1, 1 << 22), "n_layer": (1, 1024), "n_head": (1, 1024), "n_kv_head": (1, 1024),
                 "d_model": (2, 1 << 16), "d_ff": (0, 1 << 20), "max_seq_len": (1, 1 << 24)}


def check_config(config, path: str):
    """CheckpointError unless `config` (a checkpoint's "config" entry) has sizes that are integers within
    CONFIG_BOUNDS, finite positive floats for rope_base and norm_eps, a bool tie_embeddings and a dict or None
    rope_scaling. Nothing is built or allocated here."""
    def bad(what):
        return CheckpointError(f"{path} does not hold a model of this project: its config {what}")
    if not isinstance(config, dict):
        raise bad(f"is a {type(config).__name__}, not a dict")
    for key, (lo, hi) in CONFIG_BOUNDS.items():
        v = config.get(key)
        if key in config and (isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi):
            raise bad(f"has {key} {v!r}: it must be an integer from {lo} to {hi:,}")
    for key in ("rope_base", "norm_eps"):
        v = config.get(key)
        if key in config and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                              or v <= 0):
            raise bad(f"has {key} {v!r}: it must be a finite number > 0")
    if not isinstance(config.get("tie_embeddings", True), bool):
        raise bad(f"has tie_embeddings {config['tie_embeddings']!r}: it must be true or false")
    if not isinstance(config.get("rope_scaling"), (dict, type(None))):
        raise bad(f"has rope_scaling {config['rope_scaling']!r}: it must be a dict or null")

