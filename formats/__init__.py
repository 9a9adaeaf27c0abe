"""Real-model file formats: Hugging Face folders and llama.cpp GGUF in and out (hf.py), and the byte-level
BPE tokenizer of such a model (tokenizer.py). Run as `python -m formats.hf --help` from the repository root.
"""
