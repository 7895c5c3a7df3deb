"""``python -m pyro_concrete.demo``: see :mod:`pyro_concrete.demo.cli`."""

from .cli import main

main()
