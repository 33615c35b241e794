"""Writing audit events: a change as its maker describes it (:class:`Change`), drafted and
appended to the store's chain (:class:`AuditRecorder`). The HTTP side (which route records
what, in which transaction) is manager.api.audit_record; the host-side commands use this
module alone, without the server's imports.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from manager.core.audit_chain import AuditAppend, AuditEvent, AuditQuery, draft
from manager.core.identity import SYSTEM, Actor
from manager.keys.audit_key import AuditKeys
from manager.store.base import Store
from shared.masking import Masker

__all__ = ["AuditRecorder", "Change", "key_the_chain"]


@dataclass(frozen=True, slots=True)
class Change:
    """One change to one resource, as the handler that made it describes it."""

    resource_id: str
    name: str
    action: str
    summary: str
    # JSON-like views of the resource: None before a create, None after a delete. Secrets
    # and credentials are redacted by key and masked (manager.core.audit_chain.yaml_diff).
    before: Any = None
    after: Any = None
    app: str | None = None


class AuditRecorder:
    """Drafts events (diff, masking, the clock) and appends them to the store's chain."""

    def __init__(
        self,
        store: Store,
        keys: AuditKeys,
        *,
        masker: Masker | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        # The chain's keys: every event is keyed (manager.core.audit_chain).
        self.keys = keys
        self._masker = masker
        self._clock = clock

    async def write(self, actor: Actor, change: Change, **source: str) -> AuditEvent:
        """Append the event of ``change`` on its own, after the change (:meth:`entry`'s
        ``source``: resource_type, method, path, client_ip)."""
        entry = self.entry(actor, change, **source)
        return await self.store.append_audit(entry.draft, entry.key)

    def entry(
        self,
        actor: Actor,
        change: Change,
        *,
        resource_type: str,
        method: str,
        path: str,
        client_ip: str,
    ) -> AuditAppend:
        """The event of ``change``, for the store to chain (in the change's transaction)."""
        return AuditAppend(
            draft(
                actor,
                ts=self._clock(),
                method=method,
                path=path,
                client_ip=client_ip,
                resource_type=resource_type,
                resource_id=change.resource_id,
                resource_name=change.name,
                action=change.action,
                summary=change.summary,
                before=change.before,
                after=change.after,
                app=change.app,
                masker=self._masker,
            ),
            self.keys.current(),
        )


async def key_the_chain(recorder: AuditRecorder) -> AuditEvent | None:
    """At start: when the newest event is unkeyed (a trail written before the chain was
    keyed), write the checkpoint that keys it from here; answers it, None when not needed.
    Its HMAC covers the hash of the last unkeyed event, which covers the ones before: none
    of them can be rewritten from the database without breaking the checkpoint. Two
    replicas starting at once may both write one; a second checkpoint is harmless."""
    newest = await recorder.store.list_audit(AuditQuery(limit=1))
    if not newest or newest[0].key_id is not None:
        return None
    last = newest[0].seq
    return await recorder.write(
        SYSTEM,
        Change(
            "audit_chain",
            "audit chain",
            "key",
            f"keyed the audit chain: events 1 to {last} were written before keying and are"
            " checked by their hash; from here each event is checked with its key",
            after={"unkeyed_through": last},
        ),
        resource_type="audit",
        method="START",
        path="tether-manager serve",
        client_ip="local",
    )
