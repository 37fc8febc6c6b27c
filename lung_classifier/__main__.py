"""`python -m lung_classifier predict|scan ...`: the command line lives in lung_classifier.cli."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
