"""Service functions: keyword-only, take a Session, return None for a missing row."""
