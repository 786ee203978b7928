"""`python -m trtflow.cli`: the same application as the `trtflow` console script."""

from trtflow.cli import main

main()
