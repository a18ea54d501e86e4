"""Helpers that write small synthetic test data (recordings in every supported format)."""
