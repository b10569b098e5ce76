"""``python -m synthaug`` (and ``accelerate launch -m synthaug ...``): the ``synthaug`` command."""

import sys

from synthaug.cli import main

sys.exit(main())
