"""Command-line tools that build the project's data tables."""
