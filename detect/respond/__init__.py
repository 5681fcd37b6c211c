"""What the engine does about a verdict: violations, alerts, mitigation actions."""
