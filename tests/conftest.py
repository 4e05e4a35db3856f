"""Shared fixtures. The ``kumoq`` fixture comes from the kumoq.testing pytest plugin."""
