"""Operator tooling for prepost-backup: the CLI and local mode. Not deployed.

The tooling uses the deployed code (`app.py`, `chalicelib/`) of this checkout, which is
not an installed package: its directory goes on the import path here, once.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
