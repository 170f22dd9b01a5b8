"""Fixtures shared by several test modules.

The SLURM cluster is defined here (not imported into each module) so that pytest starts ONE cluster per session:
two clusters would reuse job ids, and submitit's job-state cache is keyed by job id alone.
"""
from tests.slurm_fixture import slurm_cluster  # noqa: F401
