"""`python -m sofamesh` is the `sofamesh` command."""

from sofamesh.cli import main

raise SystemExit(main())
