"""cloud-init user_data: the exact shape we write is the only shape we read back."""

from __future__ import annotations

import paramiko
import pytest

from provisioner.cloudinit import (
    ClientKey,
    HostKey,
    UserDataError,
    generate_client_key,
    generate_host_key,
    parse_user_data,
    render_user_data,
)

HOSTNAME = "g0042.vpn.example.com"


@pytest.fixture(scope="module")
def host_key() -> HostKey:
    return generate_host_key()


@pytest.fixture(scope="module")
def worker_key() -> ClientKey:
    return generate_client_key()


@pytest.fixture(scope="module")
def user_data(host_key: HostKey, worker_key: ClientKey) -> str:
    operator = generate_client_key("ops@example.com").public_line
    return render_user_data(host_key, [worker_key.public_line, operator], HOSTNAME)


def test_it_puts_cloud_config_on_the_exact_first_line(user_data: str) -> None:
    assert user_data.split("\n", 1)[0] == "#cloud-config"


def test_it_round_trips_through_parse(user_data: str, host_key: HostKey, worker_key: ClientKey) -> None:
    parsed = parse_user_data(user_data)

    assert parsed.host_private == host_key.private_pem
    assert parsed.host_public == host_key.public_line
    assert parsed.authorized_keys[0] == worker_key.public_line
    assert parsed.authorized_keys[1].endswith(" ops@example.com")
    assert parsed.hostname == HOSTNAME
    assert parsed.host_key == host_key


def test_it_writes_yaml_that_cloud_init_reads_as_intended(user_data: str, host_key: HostKey) -> None:
    yaml = pytest.importorskip("yaml")

    doc = yaml.safe_load(user_data)

    assert doc["ssh_keys"] == {"ed25519_private": host_key.private_pem, "ed25519_public": host_key.public_line}
    assert doc["ssh_deletekeys"] is True and doc["ssh_genkeytypes"] == []
    assert doc["disable_root"] is False and doc["ssh_pwauth"] is False and doc["package_upgrade"] is False
    assert doc["hostname"] == HOSTNAME and len(doc["ssh_authorized_keys"]) == 2


def test_it_generates_keys_paramiko_accepts(worker_key: ClientKey, host_key: HostKey) -> None:
    import io

    for pair in (worker_key, host_key):
        loaded = paramiko.Ed25519Key.from_private_key(io.StringIO(pair.private_pem))
        assert f"{loaded.get_name()} {loaded.get_base64()}" == " ".join(pair.public_line.split()[:2])
        assert loaded.fingerprint == pair.fingerprint
    assert worker_key.public_line.endswith(" provisioner-worker")
    assert generate_host_key().private_pem != host_key.private_pem


def test_it_rebuilds_a_pair_from_the_stored_private_key(worker_key: ClientKey) -> None:
    assert ClientKey.from_private_pem(worker_key.private_pem, "provisioner-worker") == worker_key
    with pytest.raises(UserDataError):
        ClientKey.from_private_pem("not a key")


def test_it_never_shows_the_private_key_in_reprs(user_data: str, host_key: HostKey, worker_key: ClientKey) -> None:
    body = host_key.private_pem.splitlines()[1]
    shown = [repr(host_key), str(host_key), repr(worker_key), repr(parse_user_data(user_data)), f"{host_key}"]

    for text in shown:
        assert body not in text and "PRIVATE KEY" not in text
    assert worker_key.private_pem.splitlines()[1] not in repr(worker_key)
    assert host_key.fingerprint in repr(host_key)


MUTATIONS = [
    "extra key",
    "comment",
    "password login",
    "root disabled",
    "missing newline",
    "no header",
    "tab indent",
    "reordered",
    "unquoted key",
    "no authorized keys",
    "foreign public key",
    "tampered private key",
    "crlf",
]


def _mutations(doc: str) -> dict[str, str]:
    lines = doc.split("\n")
    private_at = lines.index("  ed25519_private: |") + 2
    tampered = lines.copy()
    tampered[private_at] = "    " + "A" * len(tampered[private_at].strip())
    return {
        "extra key": doc + "runcmd: [reboot]\n",
        "comment": doc.replace("ssh_pwauth: false\n", "ssh_pwauth: false  # nope\n"),
        "password login": doc.replace("ssh_pwauth: false", "ssh_pwauth: true"),
        "root disabled": doc.replace("disable_root: false", "disable_root: true"),
        "missing newline": doc.rstrip("\n"),
        "no header": doc.replace("#cloud-config\n", ""),
        "tab indent": doc.replace("  ed25519_public", "\ted25519_public"),
        "reordered": doc.replace(
            "ssh_deletekeys: true\nssh_genkeytypes: []\n", "ssh_genkeytypes: []\nssh_deletekeys: true\n"
        ),
        "unquoted key": doc.replace('  - "ssh-ed25519', "  - ssh-ed25519", 1),
        "no authorized keys": "\n".join(line for line in lines if not line.startswith("  - ")),
        "foreign public key": doc.replace(
            doc.split('ed25519_public: "')[1].split('"')[0], generate_host_key().public_line
        ),
        "tampered private key": "\n".join(tampered),
        "crlf": doc.replace("\n", "\r\n"),
    }


@pytest.mark.parametrize("kind", MUTATIONS)
def test_it_rejects_anything_but_its_own_shape(user_data: str, host_key: HostKey, kind: str) -> None:
    bad = _mutations(user_data)[kind]
    assert bad != user_data

    with pytest.raises(UserDataError) as rejected:
        parse_user_data(bad)

    for line in host_key.private_pem.splitlines()[1:-1]:
        assert line not in str(rejected.value)


@pytest.mark.parametrize(
    ("hostname", "keys"),
    [
        ('g1"\nruncmd: [x]', None),
        ("G0001.example.com", None),
        ("-bad.example.com", None),
        ("g1.example.com", []),
        ("g1.example.com", ['ssh-ed25519 AAAAC3Nz "quoted"']),
        ("g1.example.com", ["ssh-ed25519 AAAAC3Nz\nruncmd: [x]"]),
        ("g1.example.com", ["ssh-dss AAAAB3Nz"]),
    ],
)
def test_it_refuses_inputs_that_would_bend_the_document(
    host_key: HostKey, worker_key: ClientKey, hostname: str, keys: list[str] | None
) -> None:
    with pytest.raises(UserDataError):
        render_user_data(host_key, [worker_key.public_line] if keys is None else keys, hostname)
