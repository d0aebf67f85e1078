"""Ray Jobs: submit, list, follow and stop jobs on the cluster (see submit.py)."""
