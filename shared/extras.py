"""Optional vendor libraries and the extra that installs each.

The cloud SDKs, hvac, pysaml2 and scipy are extras (``pip install 'tether[aws]'``): a host
installs only what it talks to. Code that needs one imports it lazily (never at the import
of the manager's or the delegate's core) and turns an ImportError into a message that names
the extra to install, rather than a bare "No module named boto3".
"""

from __future__ import annotations

__all__ = ["EXTRAS", "extra_for", "missing_library"]

# Top-level module -> (extra, what it is for).
EXTRAS: dict[str, tuple[str, str]] = {
    "boto3": ("aws", "the AWS SDK"),
    "botocore": ("aws", "the AWS SDK"),
    "google": ("gcp", "the Google Cloud KMS client"),
    "azure": ("azure", "the Azure Key Vault client"),
    "hvac": ("vault", "the Vault client"),
    "saml2": ("saml", "SAML sign-in (pysaml2)"),
    "scipy": ("verify", "continuous verification's statistics (scipy)"),
}


def extra_for(exc: ImportError) -> tuple[str, str] | None:
    """The extra whose library ``exc`` failed to import, or None when it is none of them."""
    name = (exc.name or "").partition(".")[0]
    return EXTRAS.get(name)


def missing_library(exc: ImportError, where: str) -> str:
    """One line: which library is missing on ``where``, and the pip command that adds it."""
    found = extra_for(exc)
    if found is None:
        return f"cannot import {exc.name or exc} on {where}"
    extra, what = found
    return f"{what} is not installed on {where}: pip install 'tether[{extra}]' (or 'tether[all]')"
