"""Real-model file formats: Hugging Face folders and llama.cpp GGUF in and out (hf.py), the byte-level BPE
tokenizer of such a model (tokenizer.py), and real text or token files read into packed windows (text.py). Run
as `python -m formats.hf --help` from the repository root.
"""
