"""``python -m fmriflow.train``: the command line of the training loop (``fmriflow.training``)."""

import sys

from .training.loop import main

if __name__ == "__main__":
    sys.exit(main())
