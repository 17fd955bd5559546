"""`python -m sage`: the command line of DESIGN.md section 7."""

from sage.cli import main

raise SystemExit(main())
