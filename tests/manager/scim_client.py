"""A synchronous SCIM client over ``requests`` for scim2-tester (scim2-client's own network
engine needs httpx2, which the project does not lock)."""

from __future__ import annotations

from typing import Any

import requests
from scim2_client.client import BaseSyncSCIMClient


class RequestsScimClient(BaseSyncSCIMClient):
    def __init__(self, base_url: str, token: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def _url(self, endpoint: str) -> str:
        if endpoint.startswith(("http://", "https://")):
            return endpoint
        return f"{self.base_url}/{endpoint.lstrip('/')}"

    def _stays_under_base_url(self, endpoint: str) -> bool:
        return self._url(endpoint).startswith(self.base_url + "/")

    def _parse_json(self, response: Any) -> Any:
        return response.json()

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        return self.session.request(method, self._url(url), timeout=30, **kwargs)
