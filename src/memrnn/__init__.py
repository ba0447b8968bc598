"""memrnn: parallelizable recurrent networks with persistent memory."""

from memrnn.scan import linear_scan

__version__ = "0.1.0"

__all__ = ["__version__", "linear_scan"]
