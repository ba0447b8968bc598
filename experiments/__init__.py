"""Reproduction experiments: YAML configs run by `python -m experiments.run <name>`."""
