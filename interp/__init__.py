"""Inside the model: where positional information lives (findings 2 and 3), measured through `Inspect`."""
