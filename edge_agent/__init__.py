"""Edge agent (issue 5). Must run without torch."""
