"""The research grids and findings behind the docs, built on the core scripts at the top level.

experiment.py (the schedule grid, and the command that runs the robustness grid), robustness.py (the
robustness grid over phase-1 students, the causal arms, the criteria), screen.py (phase-1 students through
the acceptance test and the band criterion; the README's headline), finding1.py and finding3.py (findings 1
and 3 over phase-1 students), overlap.py (the cross-document overlap sweep), realtext.py (a real teacher on
real text). Run each as `python -m research.NAME --help` from the repository root.
"""
