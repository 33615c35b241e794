"""The manager's master key: its files, sealing, and rotation."""
