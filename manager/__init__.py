"""Tether manager: the server that queues tasks and drives delegates."""
