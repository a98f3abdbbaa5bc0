"""`python -m abaw_kit ...` (and `torchrun -m abaw_kit train ...`)."""

from abaw_kit.cli import main

main()
