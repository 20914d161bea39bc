"""``python -m lmmiqa`` runs the ``lmmiqa`` command."""

import sys

from lmmiqa.cli import main

sys.exit(main())
