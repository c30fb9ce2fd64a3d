"""`python -m hashsearch`: the command line, as the `hashsearch` script runs it."""

from hashsearch.cli import main

main()
