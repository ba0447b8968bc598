"""memrnn.tasks."""
