"""``python -m latts.cli``: the same command line as the ``latts`` script."""

from latts.cli import main

main()
