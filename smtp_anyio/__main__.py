"""``python -m smtp_anyio`` is the ``smtpmux`` command."""

import sys

from ._cli import main

sys.exit(main())
