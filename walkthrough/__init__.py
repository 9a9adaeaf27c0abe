"""The classroom walkthrough's demonstrations (demos.py), one per stop of WALKTHROUGH.md: `python -m walkthrough STOP`."""
