"""``python -m halfclose.lab.servers http|dns|uvicorn ...``: the lab's Python servers."""

from __future__ import annotations

import sys

from halfclose.lab.servers.entry import main

sys.exit(main())
