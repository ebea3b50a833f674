"""Pass module being written."""
