"""Start-up errors of the real commands: one line naming the file, address or setting and
the flag to change, status 2 (systemd's RestartPreventExitStatus=2), no traceback; and
``--version`` without a command."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.e2e.harness import BIN, Proc


async def _fails(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    proc = await Proc("cmd", argv, env=env).start()
    code = await proc.wait_exit()
    assert not any("Traceback" in line for line in proc.stderr), proc.tail()
    # Log lines are JSON; the error is the one plain line.
    return code, [line for line in proc.stderr if not line.startswith("{")]


def _serve(data: Path, *extra: str, listen: str = "127.0.0.1:0") -> list[str]:
    return [str(BIN / "tether-manager"), "serve", "--data-dir", str(data), "--listen", listen]


@pytest.mark.parametrize("command", ["tether-manager", "tether-delegate", "tether-task-launcher"])
async def test_version_needs_no_command(command: str) -> None:
    proc = await Proc(command, [str(BIN / command), "--version"]).start()
    assert await proc.wait_exit() == 0
    assert proc.stdout[0].startswith(f"{command} ")


async def test_a_missing_tls_certificate_is_named(tmp_path: Path) -> None:
    cert = tmp_path / "nope.pem"
    argv = [*_serve(tmp_path / "data"), "--tls-cert", str(cert), "--tls-key", str(cert)]
    code, lines = await _fails(argv)
    assert code == 2
    assert lines == [
        f"error: cannot read the TLS certificate {cert}: No such file or directory;"
        " check --tls-cert"
    ]


async def test_a_key_that_does_not_match_is_named(tmp_path: Path) -> None:
    """A self-made data dir's CA certificate with the server's key: both named."""
    made = tmp_path / "made"
    first = await Proc("m", _serve(made)).start()
    await first.wait_stdout("listening on")
    await first.stop()
    cert, key = made / "tls" / "ca.pem", made / "tls" / "server-key.pem"
    code, lines = await _fails(
        [*_serve(tmp_path / "data"), "--tls-cert", str(cert), "--tls-key", str(key)]
    )
    assert code == 2
    assert lines == [
        f"error: cannot use the TLS certificate {cert} with the key {key}: key values mismatch;"
        " check --tls-cert and --tls-key (PEM, the key must match the certificate)"
    ]


async def test_a_busy_port_names_the_address(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, lines = await _fails(_serve(tmp_path / "data", listen=f"127.0.0.1:{port}"))
    assert code == 2
    assert lines == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use; another process"
        f" listens there (ss -ltnp 'sport = :{port}'): stop it, or pass --listen HOST:PORT"
    ]


async def test_a_data_dir_that_cannot_be_made_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, lines = await _fails(_serve(blocker / "data"))
    assert code == 2
    assert lines == [
        f"error: cannot make the data dir {blocker / 'data'}: Not a directory; check --data-dir"
    ]


async def test_a_bad_setting_is_a_configuration_error(tmp_path: Path) -> None:
    code, lines = await _fails([*_serve(tmp_path / "data"), "--time-scale", "0"])
    assert (code, lines) == (2, ["error: --time-scale must be positive"])


def _delegate(tmp_path: Path, *extra: str) -> list[str]:
    return [
        str(BIN / "tether-delegate"),
        "run",
        "--manager-url",
        "https://127.0.0.1:9",
        "--data-dir",
        str(tmp_path / "delegate"),
        "--shared-user",
        *extra,
    ]


async def test_a_delegate_names_a_ca_file_it_cannot_load(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    code, lines = await _fails(
        _delegate(tmp_path, "--ca-file", str(ca)), env={"TETHER_TOKEN": "tdt_x"}
    )
    assert code == 2
    assert len(lines) == 1
    assert lines[0].startswith(
        f"error: cannot load the CA file {ca} (check --ca-file: PEM certificates): "
    )


async def test_a_delegate_names_a_missing_ca_file_and_a_bad_setting(tmp_path: Path) -> None:
    ca = tmp_path / "none.pem"
    code, lines = await _fails(
        _delegate(tmp_path, "--ca-file", str(ca)), env={"TETHER_TOKEN": "tdt_x"}
    )
    assert (code, lines) == (
        2,
        [f"error: the CA file {ca} does not exist; check --ca-file ($TETHER_CA_FILE)"],
    )
    code, lines = await _fails(
        _delegate(tmp_path, "--max-tasks", "0"), env={"TETHER_TOKEN": "tdt_x"}
    )
    assert (code, lines) == (
        2,
        ["error: max tasks must be between 1 and 1000 (got 0); check --max-tasks"],
    )


async def test_an_unexpected_error_is_one_line_and_debug_adds_the_traceback(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    store = data / "tether.db"
    store.write_bytes(b"not a database, " * 400)
    store.chmod(0o600)
    argv = [str(BIN / "tether-manager"), "token", "list", "--data-dir", str(data)]
    code, lines = await _fails(argv)
    assert (code, lines) == (
        1,
        [
            "error: DatabaseError: file is not a database"
            " (run tether-manager with --debug for the traceback)"
        ],
    )
    debug = await Proc("debug", [argv[0], "--debug", *argv[1:]]).start()
    assert await debug.wait_exit() == 1
    assert debug.stderr[0] == "Traceback (most recent call last):"
    assert debug.stderr[-1] == "error: DatabaseError: file is not a database"
