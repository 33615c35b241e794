"""A real OpenLDAP server for the LDAP sign-in tests: Debian's ``slapd`` started on loopback
with a temporary slapd.conf and an mdb database, plain LDAP (StartTLS offered) and LDAPS on
free ports, its certificate issued by a test CA. The directory holds people under
ou=people, groupOfNames groups under ou=groups (one of them, ``disabled``, is what the
tests configure as the disabled group), and a service account for search-then-bind."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.tls import ensure_manager_certificates

SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
SCHEMAS = ("core", "cosine", "inetorgperson", "nis")
BASE = "dc=example,dc=org"
SERVICE_DN = f"cn=tether,{BASE}"
SERVICE_PASSWORD = "service-s3cret"
PASSWORDS = {"pat": "pat-Passw0rd", "sam": "sam-Passw0rd", "dee": "dee-Passw0rd"}


@dataclass(frozen=True)
class Ldap:
    ldap_url: str
    ldaps_url: str
    ca_file: Path
    base: str = BASE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _person(uid: str, name: str, mail: str) -> str:
    return (
        f"dn: uid={uid},ou=people,{BASE}\nobjectClass: inetOrgPerson\nuid: {uid}\n"
        f"cn: {name}\nsn: {name.split()[-1]}\nmail: {mail}\nuserPassword: {PASSWORDS[uid]}\n"
    )


def _group(cn: str, *uids: str) -> str:
    members = "".join(f"member: uid={u},ou=people,{BASE}\n" for u in uids)
    return f"dn: cn={cn},ou=groups,{BASE}\nobjectClass: groupOfNames\ncn: {cn}\n{members}"


DATA = "\n".join(
    [
        f"dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n",
        f"dn: ou=people,{BASE}\nobjectClass: organizationalUnit\nou: people\n",
        f"dn: ou=groups,{BASE}\nobjectClass: organizationalUnit\nou: groups\n",
        f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
        f"cn: tether\nuserPassword: {SERVICE_PASSWORD}\n",
        _person("pat", "Pat Example", "pat@example.org"),
        _person("sam", "Sam Other", "sam@example.org"),
        _person("dee", "Dee Gone", "dee@example.org"),
        _group("ops", "pat", "dee"),
        _group("auditors", "pat", "sam"),
        _group("disabled", "dee"),
    ]
)


def _conf(tmp: Path, tls_cert: Path, tls_key: Path, ca: Path) -> str:
    includes = "".join(f"include /etc/ldap/schema/{s}.schema\n" for s in SCHEMAS)
    # Anyone may bind (auth); the service account and each person read the tree; nobody
    # anonymous reads anything: a search-then-bind without the service account finds no one.
    return (
        f"{includes}pidfile {tmp}/slapd.pid\nmodulepath /usr/lib/ldap\nmoduleload back_mdb\n"
        f"TLSCertificateFile {tls_cert}\nTLSCertificateKeyFile {tls_key}\n"
        f"TLSCACertificateFile {ca}\n"
        f"database mdb\nsuffix {BASE}\nrootdn cn=admin,{BASE}\nrootpw admin-unused\n"
        f"directory {tmp}/db\nmaxsize 10485760\n"
        "access to attrs=userPassword by anonymous auth by * none\n"
        "access to * by users read by anonymous auth by * none\n"
    )


@contextlib.contextmanager
def slapd(tmp: Path) -> Iterator[Ldap]:
    """A running slapd for the block, stopped (and its files gone with ``tmp``) after."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "db").mkdir()
    certs = ensure_manager_certificates(tmp / "tls", ["127.0.0.1"])
    conf = tmp / "slapd.conf"
    conf.write_text(_conf(tmp, certs.server_cert, certs.server_key, certs.ca_cert))
    data = tmp / "data.ldif"
    data.write_text(DATA)
    subprocess.run(
        [SLAPADD, "-f", str(conf), "-l", str(data)], check=True, capture_output=True, timeout=60
    )
    plain, secure = _free_port(), _free_port()
    urls = f"ldap://127.0.0.1:{plain}/ ldaps://127.0.0.1:{secure}/"
    proc = subprocess.Popen(
        [SLAPD, "-f", str(conf), "-h", urls, "-d", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "LDAPNOINIT": "1"},
    )
    try:
        _wait_listening(proc, plain)
        _wait_listening(proc, secure)
        yield Ldap(f"ldap://127.0.0.1:{plain}", f"ldaps://127.0.0.1:{secure}", certs.ca_cert)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def _wait_listening(proc: subprocess.Popen[bytes], port: int) -> None:
    """Until slapd accepts on ``port`` (an event: the connect), or it died."""
    for _ in range(3000):
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"slapd exited {proc.returncode}: {err[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.01)  # polling a port that is not open yet; bounded by the count
    raise RuntimeError("slapd did not listen")
