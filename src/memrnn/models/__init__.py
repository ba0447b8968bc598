"""memrnn.models."""
