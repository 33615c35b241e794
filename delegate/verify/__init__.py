"""Continuous verification on the delegate: the provider it asks and the runner that judges."""
