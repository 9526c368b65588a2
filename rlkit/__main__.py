"""`python -m rlkit` (and `torchrun -m rlkit`) runs the CLI."""
from rlkit.cli import main

main()
