"""Training variants beyond the recipe, reaching train.py through its hook points (train.Lab), never through a flag
of train.py: phase 2's ablation arms, other divergences, a jittered RoPE base, a window ramp, phase 1's optimizer
moments, extra queries per record, RoPE scaling variants, other schedules; and real text in a real teacher's
tokens (longctx/). `python -m variants --help` lists its flags; every other flag is train.py's.
"""
