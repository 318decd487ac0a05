"""Real OpenSSH servers as the simulator's machines.

Each simulated instance is one `sshd` listening on its own loopback address (127.0.0.x) with:
- its own directory: `etc/` (host key, authorized_keys, sshd_config, sshd.log) and `disk/`, the
  instance's "disk", which is `$HOME` and the starting directory of every session and of SFTP;
- its own ed25519 host key, made at launch (so a new instance at a reused address has a new key,
  as on a real cloud);
- the launch's public key as the only way in (no passwords; root may log in by key only;
  `StrictModes no` so keys under /tmp work);
- Lambda's login user, `ubuntu`, besides the user running the simulator (see below).

Why `ubuntu` needs a trick: sshd logs in only accounts that exist, and this machine (a developer's,
CI's) has no `ubuntu`. When the simulator runs as root and may make a mount namespace (`unshare
--mount`, as on the dev and CI machines), each sshd runs in its own namespace where a copy of
/etc/passwd with `ubuntu` added (same uid as the simulator, home = the instance disk) is
bind-mounted over the real one; the machine's /etc/passwd is never touched. Elsewhere (not root)
a machine takes only the simulator's own user, and `/sim/v1/health` says which users work.

Why environment markers: terminating a machine must end everything that ran on it, including
processes started with `setsid nohup` that left the sshd's process tree. The sshd is started with
`TY_INSTANCE=<id>` and `TY_SIM=<tag>` in its environment, and `SetEnv` puts the same into every
session, so each process of an instance carries them in `/proc/<pid>/environ`. `kill_marked`
finds and SIGKILLs them until none are left.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import getpass
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

log = logging.getLogger("provision.simulator")

INSTANCE_ENV = "TY_INSTANCE"
SIM_ENV = "TY_SIM"
LAMBDA_USER = "ubuntu"


class SshdError(RuntimeError):
    """An sshd could not be started (the simulator reports it as a server error)."""


def find_sshd() -> str | None:
    """The sshd binary: `$TRAINYARD_SSHD` when set (and only it), else /usr/sbin/sshd or PATH's."""
    explicit = os.environ.get("TRAINYARD_SSHD")
    candidates = [explicit] if explicit else ["/usr/sbin/sshd", shutil.which("sshd")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def write_host_key(path: Path) -> str:
    """Write a new ed25519 private key (OpenSSH format) to `path`; return its public key line."""
    private, public = generate_key_pair("")
    path.write_text(private)
    path.chmod(0o600)
    (path.parent / (path.name + ".pub")).write_text(public + "\n")
    return public


def generate_key_pair(comment: str) -> tuple[str, str]:
    """A new ed25519 pair as (OpenSSH private key text, public key line)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, f"{public.decode()} {comment}".strip()


@functools.cache
def can_add_lambda_user() -> bool:
    """Can machines accept `ubuntu` here: root, and a private mount namespace can be made?"""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("mount"):
        return False
    try:
        probe = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "mount", "--bind", "/etc/passwd", "/etc/passwd"],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def adds_lambda_user() -> bool:
    """Do machines get `ubuntu` added (the simulator runs as another user, and it can)?"""
    return getpass.getuser() != LAMBDA_USER and can_add_lambda_user()


def login_users() -> list[str]:
    """The users a machine accepts, Lambda's first when it is among them."""
    me = getpass.getuser()
    return [LAMBDA_USER, me] if adds_lambda_user() else [me]


def passwd_with_lambda_user(home: Path) -> str:
    """This machine's /etc/passwd with `ubuntu` as an alias of the current uid, its home `home`."""
    me = pwd.getpwuid(os.getuid())
    entry = f"{LAMBDA_USER}:x:{me.pw_uid}:{me.pw_gid}:Lambda login user (simulated):{home}:{me.pw_shell or '/bin/sh'}"
    lines = [line for line in Path("/etc/passwd").read_text().splitlines() if not line.startswith(LAMBDA_USER + ":")]
    return "\n".join([*lines, entry, ""])


def address_free(address: str, port: int) -> bool:
    """Can something listen on address:port right now (nobody else, e.g. another simulator, does)?"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as sshd binds: connections of a machine just destroyed (TIME_WAIT) do not block it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
                return False
            raise
    return True


class Machine:
    """One instance's sshd and directory. Not thread-safe: the simulator's lock guards it."""

    def __init__(self, root: Path, instance_id: str, public_key: str, *, sim_tag: str):
        self.root = root
        self.instance_id = instance_id
        self.sim_tag = sim_tag
        self.etc = root / "etc"
        self.disk = root / "disk"
        self.address: str | None = None
        self.port: int | None = None
        self._proc: subprocess.Popen | None = None
        self.etc.mkdir(parents=True, exist_ok=True)
        self.disk.mkdir(parents=True, exist_ok=True)
        (self.etc / "authorized_keys").write_text(public_key.strip() + "\n")
        # Debian's bash reads ~/.bashrc for commands run by sshd: start sessions in the disk,
        # as a real machine starts them in $HOME.
        (self.disk / ".bashrc").write_text(
            "# simulated instance: sessions start in the instance disk ($HOME)\n"
            'case "$PWD" in "$HOME"*) ;; *) cd "$HOME" 2>/dev/null ;; esac\n'
        )
        self.host_public_key = write_host_key(self.etc / "ssh_host_ed25519_key")

    def link_filesystem(self, mount_point: str, source: Path) -> None:
        """Show a file system's data at `mount_point` taken under the disk (`/lambda/nfs/fs` is
        `~/lambda/nfs/fs`): the simulator cannot mount at the machine's real root."""
        link = self.disk.joinpath(*[p for p in mount_point.split("/") if p not in ("", ".", "..")])
        if link == self.disk or link.exists() or link.is_symlink():
            return
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(source, target_is_directory=True)

    # -- sshd -------------------------------------------------------------------------------------
    def _config(self, address: str, port: int) -> Path:
        env = f"{INSTANCE_ENV}={self.instance_id} {SIM_ENV}={self.sim_tag} HOME={self.disk}"
        text = "\n".join(
            [
                f"ListenAddress {address}",
                f"Port {port}",
                f"HostKey {self.etc / 'ssh_host_ed25519_key'}",
                f"AuthorizedKeysFile {self.etc / 'authorized_keys'}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "UsePAM no",
                "StrictModes no",
                "PidFile none",
                "PrintMotd no",
                "X11Forwarding no",
                "AllowAgentForwarding no",
                "MaxStartups 50:30:100",
                "LogLevel INFO",
                f"SetEnv {env}",
                f"Subsystem sftp internal-sftp -d {self.disk}",
                "",
            ]
        )
        path = self.etc / "sshd_config"
        path.write_text(text)
        return path

    def start(self, address: str, port: int, *, sshd: str, timeout_s: float = 10.0) -> None:
        """Start sshd on address:port and wait until it accepts connections."""
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        config = self._config(address, port)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), INSTANCE_ENV: self.instance_id, SIM_ENV: self.sim_tag}
        log_path = self.etc / "sshd.log"
        self._proc = subprocess.Popen(
            self._with_lambda_user([sshd, "-D", "-f", str(config), "-E", str(log_path)]),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.disk,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-3:] if log_path.exists() else []
                self._proc = None
                raise SshdError(f"sshd for {self.instance_id} on {address}:{port} exited: {' | '.join(tail)}")
            try:
                with socket.create_connection((address, port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise SshdError(f"sshd for {self.instance_id} did not listen on {address}:{port}") from None
                time.sleep(0.02)
        self.address, self.port = address, port
        log.info("instance %s: sshd listening on %s:%d (pid %d)", self.instance_id, address, port, self._proc.pid)

    def _with_lambda_user(self, command: list[str]) -> list[str]:
        """`command` in its own mount namespace whose /etc/passwd has `ubuntu`, where that works.

        The namespace dies with its last process; `exec` keeps the sshd's pid the Popen's pid.
        """
        if not adds_lambda_user():
            return command
        passwd = self.etc / "passwd"
        passwd.write_text(passwd_with_lambda_user(self.disk))
        script = 'mount --bind "$1" /etc/passwd && shift && exec "$@"'
        namespace = ["unshare", "--mount", "--propagation", "private", "--"]
        return [*namespace, "/bin/sh", "-c", script, "sh", str(passwd), *command]

    def stop(self) -> None:
        """Stop the listening sshd only (sessions and their processes keep running)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def rotate_host_key(self, *, sshd: str) -> str:
        """Give the machine a new host key and restart its sshd at the same address."""
        address, port = self.address, self.port
        self.stop()
        self.host_public_key = write_host_key(self.etc / "ssh_host_ed25519_key")
        if address is not None and port is not None:
            self.start(address, port, sshd=sshd)
        return self.host_public_key

    def reboot(self, *, sshd: str) -> int:
        """A restart: every process of the machine is killed, then sshd comes back at the same
        address with the same host key and disk. Returns how many processes were killed."""
        address, port = self.address, self.port
        killed = self.destroy()
        if address is not None and port is not None:
            self.start(address, port, sshd=sshd)
        return killed

    def destroy(self) -> int:
        """The machine is gone: kill the sshd and every process that ran on it. Returns the count.

        sshd rewrites its own process title over its environment, so its per-connection
        processes do not show the marker: they are found as the listener's process group and
        descendants (the listener is stopped first, so it cannot fork meanwhile). Sessions and
        everything they start keep the marker, even after `setsid` or being orphaned.
        """
        proc, self._proc = self._proc, None
        killed = 0
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGSTOP)
            tree = descendants(proc.pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # start_new_session made it a group leader
            for pid in [proc.pid, *tree]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=5)
            killed += 1 + len(tree)
        return killed + kill_marked(INSTANCE_ENV, self.instance_id)

    @property
    def sshd_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None


def descendants(root: int) -> list[int]:
    """Pids of every process below `root` in the process tree."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def marked_pids(name: str, value: str) -> list[int]:
    """Pids of processes whose environment holds `name=value` (not this process)."""
    needle = f"\0{name}={value}\0".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                env = b"\0" + fh.read() + b"\0"
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if needle in env:
            found.append(int(entry.name))
    return found


def kill_marked(name: str, value: str, *, rounds: int = 20) -> int:
    """SIGKILL every process marked `name=value`, again until none is left (forks race us)."""
    killed: set[int] = set()
    for _ in range(rounds):
        pids = [p for p in marked_pids(name, value) if _alive(p)]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.01)
    return len(killed)


def _alive(pid: int) -> bool:
    """True unless the process is gone or a zombie (a zombie's environ still reads, but it is dead)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")
