"""Run tracking: Aim runs (aim.py: RunTracking, what `rlkit run` hands the pipeline), readable Aim repositories
(aimrepo.py) and the report card (report.py). Nothing is imported here: report.py's helpers load without
aim.py's torch."""
