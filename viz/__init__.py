"""The figures of the analyses (plots.py), drawn with matplotlib from the numbers analyze.py computes."""
