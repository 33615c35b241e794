"""Workload identity end to end: real manager, real delegate, real task processes.

A task trades its request credential for an OIDC token at the manager, then logs in to a real
OpenBao server (``bao server -dev``) with its JWT auth method, configured with the manager's
JWKS URL and CA; a role bound to the prod subject and the audience reads a prod secret, and a
staging task is refused by OpenBao. The token also verifies with PyJWT against the published
JWKS before and after a key rotation, and is exchanged at moto's STS
(``AssumeRoleWithWebIdentity``). The credential is refused once its task has ended, and a
credential made up of another task's parts is refused.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import jwt
import pytest

from tests.delegate.secrets.conftest import Bao
from tests.e2e import test_secrets
from tests.e2e.harness import BIN, WAIT, Cluster

pytestmark = pytest.mark.timeout(180)

# The real servers (fixtures), as the secret managers' end-to-end tests start them.
bao = test_secrets.bao
moto = test_secrets.moto

PROD_SUB = "app:checkout:env:prod:task"
PROD_SECRET = "prod-db-password-7f3a"

# What the task runs (with the delegate's Python): its token, then what the test asks of it.
CLIENT = r"""
import json, os, ssl, sys, time, urllib.error, urllib.request

def token(audience):
    ctx = ssl.create_default_context(cafile=os.environ["TETHER_ID_TOKEN_REQUEST_CA"])
    req = urllib.request.Request(
        os.environ["TETHER_ID_TOKEN_REQUEST_URL"] + "?audience=" + audience,
        method="POST",
        headers={"Authorization": "Bearer " + os.environ["TETHER_ID_TOKEN_REQUEST_TOKEN"]},
    )
    with urllib.request.urlopen(req, context=ctx) as answer:
        return json.load(answer)["value"]

def call(url, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(req) as answer:
        return json.load(answer)

mode = sys.argv[1]
if mode == "bao":
    bao, role = sys.argv[2], sys.argv[3]
    try:
        login = call(f"{bao}/v1/auth/jwt/login", {"role": role, "jwt": token("bao")})
    except urllib.error.HTTPError as exc:
        print("bao refused:", exc.code, json.load(exc).get("errors"))
        sys.exit(3)
    read = call(
        f"{bao}/v1/secret/data/prod/db",
        headers={"X-Vault-Token": login["auth"]["client_token"]},
    )
    print("secret:", read["data"]["data"]["password"])
else:
    # Hand the credential to the test (a file of this user's), then run until told to stop.
    where = sys.argv[2]
    with open(os.path.join(where, "cred.tmp"), "w") as f:
        f.write(os.environ["TETHER_ID_TOKEN_REQUEST_TOKEN"])
    os.rename(os.path.join(where, "cred.tmp"), os.path.join(where, "cred"))
    while not os.path.exists(os.path.join(where, "stop")):
        time.sleep(0.02)
    print("stopped")
"""


async def ok(c: Cluster, *args: str) -> str:
    res = await c.tether(*args)
    assert res.code == 0, f"{args}: {res.stdout}\n{res.stderr}"
    return res.stdout


async def started(c: Cluster, tmp_path: Path) -> Path:
    """A manager with checkout's prod and staging, a delegate, and the task's client."""
    await c.start_manager()
    await ok(c, "app", "create", "checkout")
    await ok(c, "env", "create", "checkout", "prod", "--type", "production")
    await ok(c, "env", "create", "checkout", "staging", "--type", "non_production")
    await c.start_delegate("d1", "main")
    path = tmp_path / "idtoken_client.py"
    path.write_text(CLIENT)
    return path


def manager_tls(c: Cluster) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(c.ca_file))


async def request_token(c: Cluster, credential: str, audience: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{c.url}/api/v1/id-token",
            params={"audience": audience},
            headers={"Authorization": f"Bearer {credential}"},
            ssl=manager_tls(c),
        ) as answer,
    ):
        return answer.status, await answer.json()


def verify(c: Cluster, token: str, audience: str) -> dict[str, Any]:
    """PyJWT against the JWKS the manager publishes now (fetched afresh)."""
    keys = jwt.PyJWKClient(
        f"{c.url}/.well-known/jwks.json", cache_jwk_set=False, ssl_context=manager_tls(c)
    )
    claims: dict[str, Any] = jwt.decode(
        token,
        keys.get_signing_key_from_jwt(token).key,
        algorithms=["ES256"],
        audience=audience,
        issuer=c.url,
    )
    return claims


def configure_bao(server: Bao, c: Cluster) -> None:
    root = server.client()
    root.sys.enable_auth_method("jwt", path="jwt")
    config = {
        "jwks_url": f"{c.url}/.well-known/jwks.json",
        "jwks_ca_pem": c.ca_file.read_text(),
        "bound_issuer": c.url,
    }
    root.adapter.post("/v1/auth/jwt/config", json=config)
    root.sys.create_or_update_policy(
        "prod-read", 'path "secret/data/prod/*" { capabilities = ["read"] }'
    )
    role = {
        "role_type": "jwt",
        "user_claim": "sub",
        "bound_subject": PROD_SUB,
        "bound_audiences": ["bao"],
        "token_policies": ["prod-read"],
        "token_ttl": "5m",
    }
    root.adapter.post("/v1/auth/jwt/role/deploy-prod", json=role)
    root.secrets.kv.v2.create_or_update_secret(
        path="prod/db", secret={"password": PROD_SECRET}, mount_point="secret"
    )


async def test_a_prod_task_reads_its_secret_from_openbao_and_staging_is_refused(
    cluster: Cluster, bao: Bao, tmp_path: Path
) -> None:
    c = cluster
    script = await started(c, tmp_path)
    configure_bao(bao, c)

    async def run(env: str) -> tuple[int, str]:
        res = await c.tether(
            "task", "run", "--selector", "main", "--app", "checkout", "--app-env", env,
            "--", sys.executable, str(script), "bao", bao.url, "deploy-prod",
        )  # fmt: skip
        return res.code, res.stdout + res.stderr

    code, out = await run("prod")
    assert code == 0, out
    assert f"secret: {PROD_SECRET}" in out
    code, out = await run("staging")
    assert code != 0, out
    assert "bao refused: 400" in out, out
    assert PROD_SECRET not in out
    # The credential never shows in a log: the delegate masks it like a secret.
    logs = "\n".join(p.tail(10_000) for p in c.procs)
    assert "tir1." not in logs


async def _credential(where: Path) -> str:
    async with asyncio.timeout(WAIT):
        while not (where / "cred").exists():
            await asyncio.sleep(0.02)
    return (where / "cred").read_text().strip()


async def test_tokens_verify_across_a_rotation_trade_at_sts_and_die_with_the_task(
    cluster: Cluster, moto: str, tmp_path: Path
) -> None:
    c = cluster
    script = await started(c, tmp_path)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    ids = []
    for where in (first, second):
        submitted = await ok(
            c, "task", "submit", "--selector", "main", "--app", "checkout", "--app-env", "prod",
            "--", sys.executable, str(script), "hold", str(where),
        )  # fmt: skip
        ids.append(submitted.strip().splitlines()[-1])
    cred_a, cred_b = await _credential(first), await _credential(second)

    # Discovery names the issuer and the JWKS, with no credential.
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{c.url}/.well-known/openid-configuration", ssl=manager_tls(c)) as answer,
    ):
        assert answer.status == 200
        discovery = await answer.json()
    assert discovery["issuer"] == c.url
    assert discovery["jwks_uri"] == f"{c.url}/.well-known/jwks.json"

    status, body = await request_token(c, cred_a, "sts.amazonaws.com")
    assert status == 200, body
    before = body["value"]
    claims = verify(c, before, "sts.amazonaws.com")
    assert claims["sub"] == PROD_SUB
    assert (claims["task_id"], claims["attempt"], claims["delegate"]) == (ids[0], 1, "d1")
    assert claims["exp"] - claims["iat"] <= 600
    assert claims["nbf"] <= claims["iat"] < claims["exp"]
    assert claims["submitter"]
    assert claims["jti"]
    # No audience, or a bad one: a 400 naming it; a made-up credential: 401.
    assert (await request_token(c, cred_a, ""))[0] == 400
    assert (await request_token(c, "tir1.x.1.nope", "a"))[0] == 401
    # Task A's id with task B's MAC: refused, and so is A's MAC on B's attempt 2.
    _, a_id, a_attempt, a_mac = cred_a.split(".")
    _, b_id, _, b_mac = cred_b.split(".")
    assert (await request_token(c, f"tir1.{a_id}.{a_attempt}.{b_mac}", "a"))[0] == 401
    assert (await request_token(c, f"tir1.{b_id}.2.{a_mac}", "a"))[0] == 401

    # Rotation: the old token still verifies against the JWKS, a new one has the new key.
    res = await c.run(
        str(BIN / "tether-manager"), "keys", "rotate-oidc", "--data-dir", str(c.data_dir)
    )
    assert res.code == 0, res.stderr
    assert verify(c, before, "sts.amazonaws.com")["jti"] == claims["jti"]
    status, body = await request_token(c, cred_a, "sts.amazonaws.com")
    assert status == 200, body
    after = body["value"]
    assert jwt.get_unverified_header(after)["kid"] != jwt.get_unverified_header(before)["kid"]
    assert verify(c, after, "sts.amazonaws.com")["sub"] == PROD_SUB
    # A token signed by a key the manager never published does not verify.
    forged = jwt.encode(
        {**claims, "jti": "forged"},
        _other_key(),
        algorithm="ES256",
        headers={"kid": jwt.get_unverified_header(after)["kid"]},
    )
    with pytest.raises(jwt.InvalidSignatureError):
        verify(c, forged, "sts.amazonaws.com")

    # AWS: the token for a role that trusts the manager as an OIDC provider (moto's STS).
    aws = {
        "endpoint_url": moto,
        "region_name": "us-east-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }
    iam = boto3.client("iam", **aws)
    provider = iam.create_open_id_connect_provider(
        Url=c.url, ClientIDList=["sts.amazonaws.com"], ThumbprintList=["0" * 40]
    )["OpenIDConnectProviderArn"]
    role = iam.create_role(
        RoleName="checkout-prod-deploy",
        AssumeRolePolicyDocument=json.dumps(_trust(provider, c.url.removeprefix("https://"))),
    )["Role"]["Arn"]
    assumed = boto3.client("sts", **aws).assume_role_with_web_identity(
        RoleArn=role, RoleSessionName="deploy", WebIdentityToken=after
    )
    assert assumed["Credentials"]["AccessKeyId"]
    # moto checks neither the signature nor the conditions (AWS does, against the JWKS the
    # discovery document names): what it proves is that boto3 and STS take the token's form.
    assert "checkout-prod-deploy/deploy" in assumed["AssumedRoleUser"]["Arn"]

    # The task ends: its credential is refused from then on; task B's still works.
    (first / "stop").write_text("")
    await _wait_state(c, ids[0], "succeeded")
    status, body = await request_token(c, cred_a, "sts.amazonaws.com")
    assert (status, body["error"]["code"]) == (401, "unauthenticated"), body
    assert (await request_token(c, cred_b, "b"))[0] == 200
    (second / "stop").write_text("")
    await _wait_state(c, ids[1], "succeeded")
    assert (await request_token(c, cred_b, "b"))[0] == 401


def _trust(provider: str, host: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": provider},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {
                    "StringEquals": {f"{host}:aud": "sts.amazonaws.com", f"{host}:sub": PROD_SUB}
                },
            }
        ],
    }


def _other_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


async def _wait_state(c: Cluster, task_id: str, state: str) -> None:
    async with asyncio.timeout(WAIT):
        while True:
            got = json.loads(await ok(c, "--output", "json", "task", "get", task_id))["state"]
            if got == state:
                return
            assert got in ("queued", "running"), got
            await asyncio.sleep(0.05)
