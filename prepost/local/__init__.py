"""Local mode: the real app against moto plus a small emulation of what moto lacks.

Local mode runs the deployed code (`app.py`, `chalicelib/`) of this checkout, which is not
an installed package: its directory goes on the import path here, once.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
