"""Long context on your own text: the corpus split into training and held-out text (corpus), the long-context
report of a run on it (report: loss by distance, a passkey test) and a real teacher cached as its top-k tokens
(topk). train.py uses all three whenever --data is given; research/realtext.py through train.py."""
