"""Model files and folders this project cannot read exactly, and folders written whole or not at all.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) distils a real pretrained teacher; its files (a Hugging
Face folder, a llama.cpp GGUF) are read by formats/hf.py and formats/gguf.py, which fail in one line
(`FormatError`) on what they cannot map exactly, and write folders through `atomic_folder` (a kill leaves no
half-written folder), as model.atomic_write does for single files.
"""
import os
import shutil
import tempfile

from model import CheckpointError


class FormatError(CheckpointError):
    """A model file or folder this project cannot read (or a model it cannot write) exactly (formats/hf.py,
    formats/gguf.py)."""


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
