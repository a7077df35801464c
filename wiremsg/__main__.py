"""``python -m wiremsg`` runs the ``wiremsg`` command."""

import sys

from wiremsg.cli import main

sys.exit(main())
