"""memrnn.train."""
