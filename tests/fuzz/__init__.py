"""Coverage-guided fuzzing of the parsers, bounded (issue 12)."""
