"""python -m judge: the psyjudge command line."""

from judge.cli import main

main()
