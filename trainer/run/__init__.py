"""Run folders: records, claims, the job that runs one unit, verification, selection, merge."""
