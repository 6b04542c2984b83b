"""`python -m bubblefence_plugin {split,export,reset,demo}`: see `bubblefence_plugin.cli`."""

import sys

from .cli import main

sys.exit(main())
