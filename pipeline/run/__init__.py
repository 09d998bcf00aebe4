"""Execution: Ray workers, the batch each one runs, and the retry policy."""
