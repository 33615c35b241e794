"""Tether delegate: the outbound-only agent that runs tasks in the customer network."""
