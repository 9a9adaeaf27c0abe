"""Real-model file formats: Hugging Face folders and llama.cpp GGUF in and out (hf.py, gguf.py), the byte-level
BPE tokenizer of such a model (tokenizer.py), real text or token files read into packed windows (text.py), and
this project's own checkpoint files, written whole and read back without trusting them (checkpoint.py). Run as
`python -m formats.hf --help` from the repository root.
"""
