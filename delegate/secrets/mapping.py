"""ssh_key and winrm secrets as a shell task's environment variables and files.

A shell task lists such secrets in ``credential_secrets``. For a secret named N, NAME is N
upper-cased with every character other than ``A-Z`` and ``0-9`` replaced by ``_``
(``deploy-key`` -> ``DEPLOY_KEY``, ``team/prod.db`` -> ``TEAM_PROD_DB``)::

    ssh_key  TETHER_SSH_<NAME>_KEY_FILE     path of a file holding the private key (0600)
             TETHER_SSH_<NAME>_USER         when the secret has a user
             TETHER_SSH_<NAME>_PASSPHRASE   when the secret has a passphrase
    winrm    TETHER_WINRM_<NAME>_USER
             TETHER_WINRM_<NAME>_PASSWORD
             TETHER_WINRM_<NAME>_DOMAIN     when the secret has a domain

The key file lives in the task's private directory and goes with it when the task ends.
docs/secrets.md is the user's copy of this table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from delegate.secrets.values import ResolvedSecret

__all__ = ["CredentialInputs", "MappingError", "credential_inputs", "env_stem"]

_NOT_NAME = re.compile(r"[^A-Z0-9]")


class MappingError(ValueError):
    """A credential secret that cannot be mapped; names secrets, never values."""


@dataclass(frozen=True)
class CredentialInputs:
    env: dict[str, str] = field(default_factory=dict)
    # Variable name -> file content: the executor writes the file and sets the variable to
    # its path.
    files: dict[str, bytes] = field(default_factory=dict)


def env_stem(name: str) -> str:
    return _NOT_NAME.sub("_", name.upper())


def credential_inputs(
    names: Iterable[str], resolved: Mapping[str, ResolvedSecret]
) -> CredentialInputs:
    out = CredentialInputs()
    stems: dict[str, str] = {}
    for name in names:
        secret = resolved.get(name)
        if secret is None:
            raise MappingError(f'credential_secrets: secret "{name}" is not known to the task')
        stem = env_stem(name)
        if stem in stems and stems[stem] != name:
            raise MappingError(
                f'credential_secrets: secrets "{stems[stem]}" and "{name}" both map to the '
                f"variables of {stem}"
            )
        stems[stem] = name
        fields = secret.fields
        if secret.type == "ssh_key":
            prefix = f"TETHER_SSH_{stem}_"
            key = fields["key"].encode()
            # OpenSSH refuses a key file whose last line has no newline ("invalid format").
            out.files[prefix + "KEY_FILE"] = key if key.endswith(b"\n") else key + b"\n"
            _set_present(out.env, prefix, fields, {"user": "USER", "passphrase": "PASSPHRASE"})
        elif secret.type == "winrm":
            prefix = f"TETHER_WINRM_{stem}_"
            _set_present(
                out.env,
                prefix,
                fields,
                {"user": "USER", "password": "PASSWORD", "domain": "DOMAIN"},
            )
        else:
            raise MappingError(
                f'credential_secrets: secret "{name}" is a {secret.type} secret; only ssh_key '
                "and winrm secrets map to variables and files"
            )
    return out


def _set_present(
    env: dict[str, str], prefix: str, fields: Mapping[str, str], names: Mapping[str, str]
) -> None:
    # An empty optional field is one that is not set: no variable, rather than an empty one.
    for field_name, suffix in names.items():
        if fields.get(field_name):
            env[prefix + suffix] = fields[field_name]
