"""`python -m trainer ...`"""

import sys

from trainer.cli.commands import main

if __name__ == "__main__":
    sys.exit(main())
