"""Scheduled jobs: dry runs, work budgets, changed audio, several manifests, runs/ deltas."""
