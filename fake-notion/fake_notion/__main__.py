"""``python -m fake_notion``: the same as the ``fake-notion`` command."""

import sys

from fake_notion.cli import main

sys.exit(main())
