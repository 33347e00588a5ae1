"""HTTP layer: dependencies, problem responses, routes."""
