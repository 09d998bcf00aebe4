"""What the process's exit status means: one code per outcome a scheduler must tell apart."""

DONE = 0  # every row has a final result; _SUCCESS written
INVALID = 2  # invalid configuration, manifest or output folder: nothing ran
OVER_ERROR_THRESHOLD = 3  # finished, tables written, but more rows failed than max_error_rate allows
STOPPED_EARLY = 75  # stopped before the end (a work budget, SIGTERM) with all finished work kept: rerun to continue
# The object store (or file system) holding the manifest or OUT kept failing after every retry:
# committed work is kept and rerunning later will do the rest. 75 is sysexits' EX_TEMPFAIL, the
# code schedulers treat as "try again", which a budget stop is too.
STORAGE_UNAVAILABLE = 75
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT): finished work kept, rerun to continue
