"""`python -m fedtune.cli`: the `fedtune` command."""

import sys

from fedtune.cli import main

sys.exit(main())
