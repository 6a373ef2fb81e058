"""``python -m rayjac``: the same as the ``rayjac`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
