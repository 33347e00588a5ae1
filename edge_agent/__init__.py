"""Edge agent (`hadmc-agent`). Must run without torch."""
