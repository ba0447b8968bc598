"""`python -m memrnn ...` runs the `memrnn` command."""

import sys

from memrnn.cli import main

sys.exit(main())
