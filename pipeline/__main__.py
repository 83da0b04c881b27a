"""``python -m pipeline ...``: the same command-line interface as ``nnmf-pipeline``."""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
