"""Security building blocks the master, the agents and the CLI share: pure, clock-injected."""
