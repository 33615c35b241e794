"""What ``tether-manager serve`` prints at the first start of a data dir: the lines to paste
for the CLI and for a first delegate.

No secret is printed, not even on this first start: stdout of a service is the journal, a
log file. The admin API key is named by its file (``$(cat ...)``) and the delegate's token
is made by a command to run on the manager host, straight into a 0600 file.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FirstStart", "first_start_text"]


@dataclass(frozen=True, slots=True)
class FirstStart:
    url: str
    data_dir: Path
    # The self-made CA; None when the operator gave the certificate (--tls-cert).
    ca_file: Path | None
    # --tls-san names: a delegate on another host connects to the first one.
    tls_names: tuple[str, ...] = ()
    # The store is PostgreSQL: host-side commands need its URL too, which may hold a
    # password, so it is named by the variable, never printed.
    postgres: bool = False
    delegate_name: str = "delegate-01"


def _delegate_url(start: FirstStart) -> str:
    if not start.tls_names:
        return start.url
    port = start.url.rsplit(":", 1)[1]
    name = start.tls_names[0]
    return f"https://{f'[{name}]' if ':' in name else name}:{port}"


def first_start_text(start: FirstStart) -> str:
    q = shlex.quote
    data = q(str(start.data_dir))
    store = ' --database "$TETHER_DATABASE_URL"' if start.postgres else ""
    ca = q(str(start.ca_file)) if start.ca_file else "YOUR-CA-BUNDLE.pem"
    name = start.delegate_name
    lines = [
        "",
        "First start of this data dir. For the tether CLI on this host:",
        "",
        f"    export TETHER_MANAGER_URL={q(start.url)}",
        f"    export TETHER_CA_FILE={ca}",
        f"    export TETHER_API_KEY=$(cat {q(str(start.data_dir / 'admin-api-key'))})",
        "",
        "A delegate: make its token here (into a file only you can read), copy the token"
        f" and {ca} to the delegate's host as token and ca.pem, and run there:",
        "",
        f"    (umask 077; tether-manager token create {name} --data-dir {data}{store}"
        " | tail -n 1 > token)",
        f"    tether-delegate run --manager-url {q(_delegate_url(start))} --ca-file ca.pem"
        f" --token-file token --name {name} --shared-user",
        "",
        "(--shared-user runs tasks as the delegate's own user; `sudo tether-delegate"
        " install-service` runs them as separate users, under systemd.)",
        "",
    ]
    return "\n".join(lines)
