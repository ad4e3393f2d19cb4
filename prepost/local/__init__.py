"""Local mode: the real app against moto plus a small emulation of what moto lacks."""

from prepost import ROOT

# The stage of `.chalice/config.json` that local mode and the tests run: its allow lists
# hold the examples of `events/` (a bucket and a role of account 123456789012 that no
# deployer owns), so it is simulated, never deployed (`prepost.package` refuses it).
STAGE = "local"
# The largest fleet `prepost simulate` and a scenario take (the bench measures 10,000).
MAX_FLEET = 100_000

__all__ = ["MAX_FLEET", "ROOT", "STAGE"]
