"""Incident response: incoming webhooks (:mod:`.webhooks`) and the incidents alert
deliveries open and update (:mod:`.incidents`). Tether sends no outbound notifications."""
