"""Secret-manager settings are metadata (any signed-in user reads them; audit diffs hold
them), so a URL carrying a user or password is refused: credentials go in a secret."""

from __future__ import annotations

import pytest

from manager.errors import Invalid
from manager.secrets.kinds import check_settings


@pytest.mark.parametrize(
    "url",
    [
        "https://user:p4ssw0rdInUrl@vault.example.com:8200",
        "https://token@vault.example.com",
        " https://a:b@[2001:db8::1]:8200/ ",
    ],
)
def test_a_url_with_credentials_is_refused_naming_the_setting(url: str) -> None:
    with pytest.raises(Invalid) as refused:
        check_settings("vault_kv", {"url": url, "mount": "secret"})
    assert refused.value.field == "settings.url"
    assert "credentials_secret" in refused.value.message
    assert "p4ssw0rd" not in refused.value.message


def test_a_plain_url_is_taken() -> None:
    check_settings("vault_kv", {"url": "https://vault.example.com:8200", "mount": "secret"})
