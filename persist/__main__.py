"""``python -m persist``: the same as the ``persist`` console script."""

from .cli import main

main()
