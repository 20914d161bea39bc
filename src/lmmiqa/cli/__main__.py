import sys

from lmmiqa.cli import main

sys.exit(main())
