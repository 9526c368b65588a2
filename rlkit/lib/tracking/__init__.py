"""Run tracking: Aim runs (aim.py), readable Aim repositories (aimrepo.py) and the report card (report.py)."""
from rlkit.lib.tracking.aim import RunTracking

__all__ = ["RunTracking"]
