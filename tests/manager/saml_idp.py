"""A SAML identity provider for the SAML tests, run in the test with pysaml2's IdP server
(saml2.server.Server): generated RSA keys and self-signed certificates, its metadata for the
manager, and Responses it signs (or, to attack the manager, does not, or signs with another
key, or wraps)."""

from __future__ import annotations

import base64
import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.config import IdPConfig
from saml2.metadata import create_metadata_string
from saml2.saml import NAMEID_FORMAT_PERSISTENT, NameID
from saml2.server import Server

IDP_ENTITY = "urn:test:idp"
SSO_URL = "https://idp.example.test/sso"
PASSWORD_CONTEXT = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
MFA_CONTEXT = "https://refeds.org/profile/mfa"


def key_pair(tmp: Path, name: str) -> tuple[Path, Path]:
    """An RSA key and a self-signed certificate for it, as PEM files."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    key_file, cert_file = tmp / f"{name}.key", tmp / f"{name}.crt"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file


def _config(tmp: Path, key: Path, cert: Path, sp_metadata: str | None, lifetime: int) -> Any:
    conf = IdPConfig()
    service: dict[str, Any] = {
        "idp": {
            "endpoints": {"single_sign_on_service": [(SSO_URL, BINDING_HTTP_REDIRECT)]},
            "policy": {"default": {"lifetime": {"minutes": lifetime}}},
            "name_id_format": [NAMEID_FORMAT_PERSISTENT],
        }
    }
    conf.load(
        {
            "entityid": IDP_ENTITY,
            "xmlsec_binary": "/usr/bin/xmlsec1",
            "key_file": str(key),
            "cert_file": str(cert),
            "service": service,
            "metadata": {"inline": [sp_metadata]} if sp_metadata else {},
            "allow_unknown_attributes": True,
        }
    )
    return conf


@dataclass
class Idp:
    tmp: Path
    key: Path
    cert: Path

    def metadata(self) -> str:
        out = create_metadata_string(None, config=_config(self.tmp, self.key, self.cert, None, 5))
        return out.decode() if isinstance(out, bytes) else str(out)

    def request_id(self, authorize_url: str) -> str:
        """The ID of the AuthnRequest the manager's redirect carries."""
        server = Server(config=_config(self.tmp, self.key, self.cert, None, 5))
        q = parse_qs(urlparse(authorize_url).query)
        req = server.parse_authn_request(q["SAMLRequest"][0], BINDING_HTTP_REDIRECT)
        return str(req.message.id)

    def response(
        self,
        sp_metadata: str,
        *,
        in_response_to: str,
        acs_url: str,
        audience: str,
        subject: str,
        attributes: dict[str, list[str]],
        sign_assertion: bool = True,
        sign_response: bool = False,
        context: str = PASSWORD_CONTEXT,
        lifetime: int = 5,
        key: Path | None = None,
        cert: Path | None = None,
    ) -> str:
        """A Response as the IdP posts it (base64 XML)."""
        conf = _config(self.tmp, key or self.key, cert or self.cert, sp_metadata, lifetime)
        server = Server(config=conf)
        xml = server.create_authn_response(
            identity=attributes,
            in_response_to=in_response_to,
            destination=acs_url,
            sp_entity_id=audience,
            name_id=NameID(format=NAMEID_FORMAT_PERSISTENT, text=subject),
            authn={"class_ref": context, "authn_auth": IDP_ENTITY},
            sign_assertion=sign_assertion,
            sign_response=sign_response,
        )
        return base64.b64encode(str(xml).encode()).decode()


_ = BINDING_HTTP_POST
