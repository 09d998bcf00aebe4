"""Tasks: the questions asked of each clip and the parsers that turn answers into columns."""
