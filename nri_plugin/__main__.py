"""``python -m nri_plugin``: the ``nri-memory-manager`` command."""

import sys

from nri_plugin.cli import main

sys.exit(main())
