"""`python -m walkthrough STOP`: the classroom walkthrough's demonstrations (see demos.py)."""
from walkthrough.demos import main

main()
