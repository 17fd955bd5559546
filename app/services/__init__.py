"""Business logic as plain functions taking a session: called by routes, the CLI and the worker alike."""
