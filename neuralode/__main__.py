"""``python -m neuralode`` is the ``neuralode`` command."""
from neuralode.cli import main

main()
