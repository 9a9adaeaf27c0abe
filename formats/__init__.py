"""Real-model files: Hugging Face folders and llama.cpp GGUF in and out (hf.py, gguf.py), the byte-level BPE tokenizer
of such a model (tokenizer.py), nanoGPT `.bin` token files (text.py), and what they share (files.py). Run as
`python -m formats.hf --help` from the repository root.
"""
