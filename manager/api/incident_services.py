"""The services of issue 18's incident response and freezes, kept on the app beside the
Context (manager.api.context) so their wiring is one line in the server."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from manager.governance.freeze import Freezes
from manager.incidents.incidents import Incidents
from manager.incidents.webhooks import Webhooks

__all__ = ["INCIDENT_SERVICES", "IncidentServices", "services"]


@dataclass
class IncidentServices:
    freezes: Freezes
    webhooks: Webhooks
    incidents: Incidents


INCIDENT_SERVICES: web.AppKey[IncidentServices] = web.AppKey(
    "tether_incident_services", IncidentServices
)


def services(request: web.Request) -> IncidentServices:
    return request.app[INCIDENT_SERVICES]
