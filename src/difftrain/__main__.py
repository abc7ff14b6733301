"""`python -m difftrain`, which is what `accelerate launch -m difftrain train ...` runs in each process."""

from difftrain.cli import main

main()
