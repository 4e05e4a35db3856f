"""Egress: pools and sources, ready queues, and dispatch to the delivery protocols."""
