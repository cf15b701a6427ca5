"""Entry point of `make bench`; the measurements live in trainer/bench.py."""

import sys

from trainer.bench import main

if __name__ == "__main__":
    sys.exit(main())
