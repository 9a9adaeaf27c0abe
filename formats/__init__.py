"""Real-model file formats: Hugging Face folders and llama.cpp GGUF in and out (hf.py), the byte-level
BPE tokenizer of such a model (tokenizer.py), and this project's own checkpoint files, written whole and read
back without trusting them (checkpoint.py). Run as `python -m formats.hf --help` from the repository root.
"""
