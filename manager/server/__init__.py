"""The tether-manager server: app wiring and lifecycle, and host-side maintenance (backup)."""
