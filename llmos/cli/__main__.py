"""`python -m llmos.cli VERB ...`: the same command line as `llmos VERB ...` (torchrun and the tests use it)."""
import sys

from llmos.cli import main

sys.exit(main())
