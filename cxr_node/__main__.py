"""``python -m cxr_node`` is ``cxr-node``."""

from cxr_node.cli import main

raise SystemExit(main())
