"""SIMULATED SSH hosts: a test and demo fixture standing in for freshly booted VPSes.

Nothing here runs a command on this machine. Each host is a paramiko SSH server on
``(ip, ssh_port)`` with ``ip`` in 127.0.0.0/8 (all local on Linux; nothing else is accepted).
It presents the ed25519 host key FROM the instance's cloud-init user_data and accepts only
user ``root``: by public key, with a key from root's ``authorized_keys`` on its disk (at first
the user_data's ``ssh_authorized_keys``, as cloud-init writes them), or by the instance's
root password when sshd's configuration on its disk allows it (at first the user_data's
``ssh_pwauth``; see :mod:`provisioner.sandbox.hostcommands`). Its disk is
``root_dir/<instance_id>/``: absolute remote paths map inside it, relative ones are under
``/root``, a path with a ``..`` component is refused. Files survive stop() and restarts;
start() again with the same ip, user_data and root password is a no-op (else the host restarts).
SFTP: open/read/write, (f)stat, lstat, (f)setstat (permission bits only), mkdir, remove and
posix-rename; nothing else. Exec requests are split with ``shlex`` and answered::

    cloud-init status --wait                   "status: done", exit 0
    bash /root/provisioner/install.sh [install PROTOCOL...]
        waits install_seconds (stop() interrupts it: the connection drops, nothing is
        installed), then, for OpenVPN (the default), needs /root/provisioner/{install.sh,
        server.conf, ca.crt, server.crt, server.key, tls-crypt.key, crl.pem} present and
        non-empty, and server.conf lines starting with each of the directives ca, cert, key,
        tls-crypt, crl-verify. Then it copies the six files after install.sh into
        /etc/openvpn/server/, writes /var/lib/provisioner/installed, prints
        "provisioner-install: ok", exit 0 (the same on a rerun). Else one stderr line per
        problem, nothing copied, exit 1:
        "provisioner-install: missing /root/provisioner/ca.crt" (or "empty ..."),
        "provisioner-install: /root/provisioner/server.conf has no 'crl-verify' directive"
    bash /root/provisioner/install.sh update-crl [CN...] | update-peers | update-ssh MODE
        at once, as :mod:`provisioner.sandbox.hostcommands` describes
    systemctl is-active openvpn-server@server  "active", exit 0 once installed; else "inactive", 3
    rm -f PATH...                              exit 0 (missing files are fine); directory or
                                               refused path: stderr, exit 1
    cat PATH...                                the contents; missing/refused: stderr, exit 1
    true                                       exit 0
    sh -c SCRIPT provisioner-upload DIR NAME...
        the upload of many files at once (the script is not read): the tar archive on stdin
        (at most 16 MiB) must hold each NAME as a regular file; each is written to DIR/NAME
        with its entry's mode; prints "provisioner-upload: ok", exit 0. A NAME missing from
        the archive, or an archive that is not one: stderr, nothing written, exit 1 (2)
    anything else                              stderr "simulated host: command not supported:
                                               <command>", exit 127

Faults (``set_fault(target, kind, **params)``, target a host IP or ``"*"``; ``clear_faults()``):
``refuse`` stop listening (ECONNREFUSED); ``hang`` accept TCP, never send the banner (until
clear_faults/stop); ``wrong_host_key`` present another ed25519 key; ``command_hang`` exec never
answers until the client closes the channel or stop() (``match="text"``: only commands
containing it); ``slow_install`` the next ``count`` installs to start (default: every one)
take ``seconds`` longer (stop() still interrupts them) -- one server whose install hangs
for ten minutes among healthy ones, as the worker benchmark needs.
"""

from __future__ import annotations

import hmac
import io
import logging
import os
import posixpath
import shlex
import socket
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from types import TracebackType
from typing import Any

import paramiko
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provisioner.sandbox import hostcommands

log = logging.getLogger(__name__)
PARAMIKO_LOGGER = "provisioner.sandbox.hosts.paramiko"
logging.getLogger(PARAMIKO_LOGGER).setLevel(logging.CRITICAL)  # resets by departing clients are noise

INSTALL_DIR = hostcommands.INSTALL_DIR
INSTALL_SCRIPT = f"{INSTALL_DIR}/install.sh"
INSTALLED_MARKER = hostcommands.INSTALLED_MARKER
FAULT_KINDS = {"refuse": set(), "hang": set(), "wrong_host_key": set(), "command_hang": {"match"},
               "slow_install": {"seconds", "count"}}
_HANG_BOUND = 600.0  # a hung exec still ends at stop(); this only bounds a forgotten one


class SimulatedHostError(RuntimeError):
    """The simulator cannot do what was asked (bad address, port in use, bad user_data)."""


def _pkey(private_pem: str) -> paramiko.PKey:
    return paramiko.Ed25519Key.from_private_key(io.StringIO(private_pem))


def _new_host_key() -> paramiko.PKey:
    pem = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                     serialization.NoEncryption())
    return _pkey(pem.decode("ascii"))


def read_cloud_config(user_data: str) -> tuple[str, list[str], bool]:
    """The ed25519 host key, the authorized keys and cloud-init's ``ssh_pwauth`` (true when
    absent: the image's sshd default), read the way cloud-init reads them: as YAML (PyYAML, as
    cloud-init itself uses), never with the product's own renderer's parser, so a document the
    product renders wrongly fails here as it would on a real VPS. Parsed once: a fleet's
    hosts start in the worker's own process in the benchmarks."""
    if not user_data.startswith("#cloud-config\n"):
        raise ValueError("user_data does not start with '#cloud-config' (cloud-init would ignore it)")
    try:
        doc = yaml.safe_load(user_data)
    except yaml.YAMLError as exc:
        raise ValueError(f"user_data is not valid YAML: {exc}") from None
    keys = doc.get("ssh_keys") if isinstance(doc, dict) else None
    private = keys.get("ed25519_private") if isinstance(keys, dict) else None
    authorized = doc.get("ssh_authorized_keys") if isinstance(doc, dict) else None
    if not isinstance(private, str):
        raise ValueError("user_data has no ssh_keys.ed25519_private")
    if not isinstance(authorized, list) or not authorized or not all(isinstance(k, str) for k in authorized):
        raise ValueError("user_data has no ssh_authorized_keys list")
    return private, authorized, doc.get("ssh_pwauth", True) is not False


def _mode(attr: paramiko.SFTPAttributes, default: int) -> int:
    return default if attr.st_mode is None else attr.st_mode & 0o777


local_path = hostcommands.local_path


class _Handle(paramiko.SFTPHandle):
    def __init__(self, fileobj: Any, flags: int) -> None:
        super().__init__(flags)
        self.readfile = self.writefile = fileobj

    def stat(self) -> Any:
        return paramiko.SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))

    def chattr(self, attr: paramiko.SFTPAttributes) -> int:
        if attr.st_mode is not None:
            os.fchmod(self.readfile.fileno(), _mode(attr, 0))
        return paramiko.SFTP_OK


class _SFTP(paramiko.SFTPServerInterface):
    def __init__(self, server: object, host_dir: Path) -> None:
        super().__init__(server)
        self._dir = host_dir

    def _do(self, remote: str, action: Callable[[Path], Any]) -> Any:
        path = local_path(self._dir, remote)
        if path is None:
            return paramiko.SFTP_PERMISSION_DENIED
        try:
            result = action(path)
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)
        return paramiko.SFTP_OK if result is None else result

    def canonicalize(self, path: str) -> str:
        return posixpath.normpath("/" + (path if path.startswith("/") else f"root/{path}").lstrip("/"))

    def stat(self, path: str) -> Any:
        return self._do(path, lambda p: paramiko.SFTPAttributes.from_stat(p.stat()))

    def lstat(self, path: str) -> Any:
        return self._do(path, lambda p: paramiko.SFTPAttributes.from_stat(p.lstat()))

    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> Any:
        mode = {os.O_RDONLY: "rb", os.O_WRONLY: "wb", os.O_RDWR: "r+b"}[flags & os.O_ACCMODE]
        opened = lambda p: os.fdopen(os.open(p, flags | os.O_NOFOLLOW, _mode(attr, 0o644)), mode)  # noqa: E731
        return self._do(path, lambda p: _Handle(opened(p), flags))

    def remove(self, path: str) -> Any:
        return self._do(path, Path.unlink)

    def mkdir(self, path: str, attr: paramiko.SFTPAttributes) -> Any:
        return self._do(path, lambda p: p.mkdir(_mode(attr, 0o755)))

    def chattr(self, path: str, attr: paramiko.SFTPAttributes) -> Any:
        return self._do(path, lambda p: None if attr.st_mode is None else p.chmod(_mode(attr, 0)))

    def posix_rename(self, oldpath: str, newpath: str) -> Any:
        target = local_path(self._dir, newpath)
        return paramiko.SFTP_PERMISSION_DENIED if target is None else self._do(oldpath, lambda p: os.replace(p, target))


def _remove(path: Path) -> bytes:
    path.unlink(missing_ok=True)
    return b""


UPLOAD_TAG = "provisioner-upload"
UPLOAD_OK = b"provisioner-upload: ok\n"
_UPLOAD_LIMIT = 16 * 2**20


def _argv(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:
        return []


def _upload_args(argv: list[str]) -> tuple[str, list[str]] | None:
    """DIR and the NAMEs of ``sh -c SCRIPT provisioner-upload DIR NAME...``; None for any other command."""
    if argv[:2] == ["sh", "-c"] and argv[3:4] == [UPLOAD_TAG] and len(argv) > 5:
        return argv[4], argv[5:]
    return None


def _read_to_end(chan: paramiko.Channel) -> bytes:
    """The command's standard input until the client ends it (bounded in size and time)."""
    data = bytearray()
    chan.settimeout(30.0)
    try:
        while len(data) <= _UPLOAD_LIMIT:
            chunk = chan.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        chan.settimeout(None)
    return bytes(data)


class _Host(paramiko.ServerInterface):
    """One simulated VPS: its listener, its connections and its command simulation."""

    def __init__(self, hosts: SimulatedHosts, instance_id: str, ip: str, user_data: str,
                 root_password: str = "") -> None:
        try:
            host_private, authorized, pwauth = read_cloud_config(user_data)
            self.host_key = _pkey(host_private)
        except (ValueError, paramiko.SSHException) as exc:
            raise SimulatedHostError(f"instance {instance_id}: {exc}") from None
        self.hosts, self.instance_id, self.ip, self.user_data = hosts, instance_id, ip, user_data
        self.root_password = root_password
        self.dir = hosts.root_dir / instance_id
        self.disk = hostcommands.Disk(self.dir)
        self.user_data_keys = list(authorized)
        self.ssh_pwauth = pwauth
        self.stopping = threading.Event()
        self.listener: socket.socket | None = None
        self.transports: list[paramiko.Transport] = []
        self.hung: list[socket.socket] = []
        self.running: list[str] = []  # all four guarded by hosts.activity

    def _password_login(self) -> bool:
        return bool(self.root_password) and hostcommands.password_login(self.disk, self.ssh_pwauth)

    def get_allowed_auths(self, username: str) -> str:
        return "publickey,password" if self._password_login() else "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        authorized = hostcommands.authorized_keys(self.disk, self.user_data_keys)
        known = username == "root" and (key.get_name(), key.get_base64()) in authorized
        return paramiko.AUTH_SUCCESSFUL if known else paramiko.AUTH_FAILED

    def check_auth_password(self, username: str, password: str) -> int:
        ok = username == "root" and self._password_login() and hmac.compare_digest(
            password.encode("utf-8"), self.root_password.encode("utf-8"))
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        # paramiko sends the reply to this request only after we return, so the work runs in
        # its own thread, which never closes the channel before the client does (see exec).
        text = command.decode("utf-8", "replace")
        threading.Thread(target=self.exec, args=(channel, text), name="simhost-exec", daemon=True).start()
        return True

    def listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.ip, self.hosts.ssh_port))
            sock.listen(16)
        except OSError as exc:
            sock.close()
            raise SimulatedHostError(f"cannot listen on {self.ip}:{self.hosts.ssh_port}: {exc.strerror}") from None
        with self.hosts.activity:
            self.listener = sock
        threading.Thread(target=self._accept_loop, args=(sock,), name=f"simhost-{self.ip}", daemon=True).start()

    def unlisten(self) -> None:
        with self.hosts.activity:
            sock, self.listener = self.listener, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked in _accept_loop
            except OSError as exc:
                log.debug("simulated host %s: listener shutdown: %s", self.ip, exc.strerror)
            sock.close()

    def release_hung(self) -> None:
        with self.hosts.activity:
            hung, self.hung = self.hung, []
        for sock in hung:
            sock.close()

    def stop(self) -> None:
        self.stopping.set()
        self.unlisten()
        self.release_hung()
        with self.hosts.activity:
            transports, self.transports = self.transports, []
        for transport in transports:
            transport.close()  # also closes its channels, which ends their exec threads

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # the listener was shut down: stop(), or a "refuse" fault
            try:
                self._serve(conn)
            except (OSError, EOFError, paramiko.SSHException) as exc:
                log.warning("simulated host %s: could not serve a connection: %s", self.ip, exc)
                conn.close()

    def _serve(self, conn: socket.socket) -> None:
        transport = None
        if self.hosts.fault(self.ip, "hang") is None:
            wrong = self.hosts.fault(self.ip, "wrong_host_key") is not None
            transport = paramiko.Transport(conn)
            transport.set_log_channel(PARAMIKO_LOGGER)
            transport.add_server_key(self.hosts.alternate_host_key() if wrong else self.host_key)
            transport.set_subsystem_handler("sftp", paramiko.SFTPServer, _SFTP, self.dir)
            transport.start_server(event=threading.Event(), server=self)
        with self.hosts.activity:
            if transport is None:
                self.hung.append(conn)
            else:
                self.transports = [t for t in self.transports if t.is_active()] + [transport]
            self.hosts.activity.notify_all()
        if self.stopping.is_set():  # stop() ran meanwhile and may have missed this one
            self.stop()

    def exec(self, chan: paramiko.Channel, command: str) -> None:
        with self.hosts.activity:
            self.running.append(command)
            self.hosts.activity.notify_all()
        try:
            hang = self.hosts.fault(self.ip, "command_hang")
            if hang is not None and hang.get("match", "") in command:
                log.debug("simulated host %s: %r hangs (fault)", self.ip, command)
                chan.status_event.wait(_HANG_BOUND)  # set when the channel closes: client or stop()
                return
            stdin = _read_to_end(chan) if _upload_args(_argv(command)) is not None else b""
            out, err, status = self.run_command(command, stdin)
            if self.stopping.is_set():
                return  # the host went down mid-command: the client sees the connection drop
            log.debug("simulated host %s: %r exited %d", self.ip, command, status)
            chan.sendall(out)
            chan.sendall_stderr(err)
            chan.send_exit_status(status)
            chan.shutdown_write()
            # Closing before paramiko has sent the exec reply makes the client fail with
            # "Channel closed" (REFERENCE §5.5), so the client closes first; bounded.
            chan.status_event.wait(2.0)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            log.debug("simulated host %s: client went away during %r: %s", self.ip, command, exc)
        finally:
            if not self.stopping.is_set():  # else stop() drops the whole connection instead
                chan.close()
            with self.hosts.activity:
                self.running.remove(command)

    def _path(self, remote: str) -> Path:
        return self.disk.path(remote)

    def run_command(self, command: str, stdin: bytes = b"") -> tuple[bytes, bytes, int]:
        argv = _argv(command)
        upload = _upload_args(argv)
        if upload is not None:
            return self._upload(*upload, stdin)
        if argv == ["cloud-init", "status", "--wait"]:
            return b"status: done\n", b"", 0
        if argv[:2] == ["bash", INSTALL_SCRIPT]:
            return self._script(argv[2:])
        if argv == ["systemctl", "is-active", "openvpn-server@server"]:
            if self._path(INSTALLED_MARKER).is_file():
                return b"active\n", b"", 0
            return b"inactive\n", b"", 3
        if argv == ["true"]:
            return b"", b"", 0
        if argv[:2] == ["rm", "-f"]:
            return self._each(argv[2:], "rm", _remove)
        if argv[:1] == ["cat"] and len(argv) > 1:
            return self._each(argv[1:], "cat", lambda p: p.read_bytes())
        return b"", f"simulated host: command not supported: {command}\n".encode(), 127

    def _upload(self, directory: str, names: list[str], archive: bytes) -> tuple[bytes, bytes, int]:
        try:
            with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
                entries = {m.name: m for m in tar.getmembers() if m.isfile()}
                missing = [n for n in names if n not in entries or "/" in n]
                if missing:
                    return b"", f"mv: cannot stat '{missing[0]}': No such file or directory\n".encode(), 1
                contents = {n: tar.extractfile(entries[n]).read() for n in names}  # type: ignore[union-attr]
        except tarfile.TarError as exc:
            return b"", f"tar: {exc}\n".encode(), 2
        try:
            for name in names:
                self.disk.write(f"{directory}/{name}", contents[name], entries[name].mode & 0o7777)
        except OSError as exc:     # refused (outside the host), a directory in the way
            return b"", f"mv: {directory}: {exc.strerror or exc}\n".encode(), 1
        return UPLOAD_OK, b"", 0

    def _each(self, paths: list[str], name: str, action: Callable[[Path], bytes]) -> tuple[bytes, bytes, int]:
        out, err = bytearray(), bytearray()
        for remote in paths:
            try:
                out += action(self._path(remote))
            except OSError as exc:
                err += f"{name}: {remote}: {exc.strerror or exc}\n".encode()
        return bytes(out), bytes(err), 1 if err else 0

    def _script(self, args: list[str]) -> tuple[bytes, bytes, int]:
        """install.sh, as the simulator reads its contract (provisioner.sandbox.hostcommands)."""
        try:
            if not args or args[0] == "install":
                if self.stopping.wait(self.hosts.install_seconds + self.hosts.take_slow_install(self.ip)):
                    return b"", b"", 130  # never sent: exec() sees the host stopping
                return hostcommands.install(self.disk, args[1:] or ["openvpn"])
            if args[0] == "update-crl":
                return hostcommands.update_crl(self.disk, args[1:])
            if args == ["update-peers"]:
                return hostcommands.update_peers(self.disk)
            if args[0] == "update-ssh" and len(args) == 2:
                return hostcommands.update_ssh(self.disk, args[1], self.user_data_keys)
        except PermissionError as exc:
            return b"", f"provisioner-install: error: {exc}\n".encode(), 1
        return b"", f"provisioner-install: error: usage: {' '.join(args)}\n".encode(), 1


@dataclass(eq=False)
class SimulatedHosts:
    """Simulated VPSes on loopback addresses, one SSH port for all (see the module docstring)."""

    root_dir: Path
    ssh_port: int
    install_seconds: float = 0.0
    _hosts: dict[str, _Host] = field(default_factory=dict, init=False, repr=False)
    _faults: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _alternate: paramiko.PKey | None = field(default=None, init=False, repr=False)
    activity: threading.Condition = field(default_factory=threading.Condition, init=False, repr=False)

    def __post_init__(self) -> None:
        self.root_dir = Path(self.root_dir)

    def __enter__(self) -> SimulatedHosts:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close_all()

    def start(self, instance_id: str, ip: str, user_data: str, root_password: str = "") -> None:
        if not instance_id or instance_id in (".", "..") or not all(c.isalnum() or c in "._-" for c in instance_id):
            raise SimulatedHostError("an instance id may hold only letters, digits and ._-")
        try:
            loopback = ip_address(ip).version == 4 and ip_address(ip).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise SimulatedHostError(f"simulated hosts live on 127.0.0.0/8 only, not {ip!r}")
        with self._lock:
            running = self._hosts.get(instance_id)
        if running is not None and (running.ip, running.user_data, running.root_password) == \
                (ip, user_data, root_password):
            return  # "make sure it runs": live sessions stay up
        self.stop(instance_id)
        host = _Host(self, instance_id, ip, user_data, root_password)
        (host.dir / "root").mkdir(parents=True, exist_ok=True)  # an existing dir keeps its files
        with self._lock:
            self._hosts[instance_id] = host
        if self.fault(ip, "refuse") is None:
            try:
                host.listen()
            except SimulatedHostError:
                self.stop(instance_id)
                raise
        log.info("simulated host %s up on %s:%d", instance_id, ip, self.ssh_port)

    def stop(self, instance_id: str) -> None:
        with self._lock:
            host = self._hosts.pop(instance_id, None)
        if host is not None:
            host.stop()
            log.info("simulated host %s stopped", instance_id)

    def close_all(self) -> None:
        with self._lock:
            ids = list(self._hosts)
        for instance_id in ids:
            self.stop(instance_id)

    def host_dir(self, instance_id: str) -> Path:
        return self.root_dir / instance_id

    def set_fault(self, target: str, kind: str, **params: Any) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(sorted(FAULT_KINDS))}")
        if set(params) - FAULT_KINDS[kind]:
            raise ValueError(f"fault {kind!r} takes {sorted(FAULT_KINDS[kind]) or 'no'} parameters")
        with self._lock:
            self._faults[(target, kind)] = params
            hosts = [h for h in self._hosts.values() if target in ("*", h.ip)]
        if kind == "refuse":
            for host in hosts:
                host.unlisten()

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            hosts = list(self._hosts.values())
        for host in hosts:
            host.release_hung()
            if host.listener is None and not host.stopping.is_set():
                host.listen()

    def take_slow_install(self, ip: str) -> float:
        """Extra seconds for an install starting on ``ip`` now (a ``slow_install`` fault), counted down."""
        with self._lock:
            key = (ip, "slow_install") if (ip, "slow_install") in self._faults else ("*", "slow_install")
            spec = self._faults.get(key)
            if spec is None:
                return 0.0
            if "count" in spec:
                if spec["count"] <= 0:
                    return 0.0
                spec["count"] -= 1
            return float(spec.get("seconds", _HANG_BOUND))

    def fault(self, ip: str, kind: str) -> dict[str, Any] | None:
        with self._lock:
            return self._faults.get((ip, kind), self._faults.get(("*", kind)))

    def running_commands(self) -> list[str]:
        """Exec requests being answered right now, on every host."""
        with self.activity:
            return [c for h in list(self._hosts.values()) for c in h.running]

    def hung_connections(self) -> int:
        with self.activity:
            return sum(len(h.hung) for h in list(self._hosts.values()))

    def wait_for(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Block until ``condition()`` (e.g. ``lambda: hosts.running_commands()``) holds; False on timeout."""
        with self.activity:
            return self.activity.wait_for(condition, timeout)

    def alternate_host_key(self) -> paramiko.PKey:
        """The key a host presents under the "wrong_host_key" fault (one per simulator)."""
        with self._lock:
            if self._alternate is None:
                self._alternate = _new_host_key()
            return self._alternate
