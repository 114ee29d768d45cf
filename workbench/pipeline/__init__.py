"""Pipeline planning, run state and the runner."""
