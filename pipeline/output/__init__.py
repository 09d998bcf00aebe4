"""Output: committed parts, the final tables and run.json."""
