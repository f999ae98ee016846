"""``python -m qlnumba``: the same as the ``qlnumba`` command (qlnumba/cli.py)."""
import sys

from .cli import main

sys.exit(main())
