"""`snakemake` for the SLURM test, with the executor plugin's status-poll backoff capped.

    python tests/slurm_snakemake.py <snakemake's arguments>

snakemake-executor-plugin-slurm polls the job states, and after a poll that finds no job finished
waits 10 s longer than the time before (up to 180 s; no option sets the step). On this test's
one-node cluster a grouped smoke job takes 10-60 s, so that growing wait was a large part of each
job's turnaround (the whole study about 150 s). Here the wait never exceeds CAP seconds; everything
else (the profile, sbatch, the plugin's status command) is the plugin's own.
"""

from __future__ import annotations

import sys

from snakemake_executor_plugin_slurm import Executor

CAP = 3  # seconds between polls at most

_wait = Executor.next_seconds_between_status_checks  # a property of snakemake's RemoteExecutor
Executor.next_seconds_between_status_checks = property(
    _wait.fget, lambda self, seconds: _wait.fset(self, seconds if seconds is None else min(seconds, CAP)))

if __name__ == "__main__":
    from snakemake.cli import main

    sys.argv[0] = "snakemake"
    sys.exit(main())
