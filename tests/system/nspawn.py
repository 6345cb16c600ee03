"""Boot a Debian rootfs with systemd in systemd-nspawn and run commands in it (see conftest.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BOOT_TIMEOUT = 120.0
CONTAINER_ENV = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "HOME=/root",
                 "DEBIAN_FRONTEND=noninteractive"]
REBOOT_EXIT = 133  # systemd-nspawn's exit status when the container asked for a reboot


def cannot_run_reason() -> str | None:
    if os.geteuid() != 0:
        return "system tests need root (systemd-nspawn, nsenter)"
    for tool in ("systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} not found: apt-get install systemd-container util-linux"
    rootfs = Path(os.environ.get("TQ_ROOTFS", "/var/cache/tq-test/bookworm"))
    if not (rootfs / ".tq-rootfs-complete").exists() and shutil.which("debootstrap") is None:
        return "no cached rootfs and debootstrap not found: apt-get install debootstrap"
    return None


class Container:
    """A booted bookworm container; run() executes a command inside it."""

    def __init__(self, root: Path, log: Path, writable_sysctl: bool = True, netns: str | None = None) -> None:
        """`netns`: boot in this network namespace (`ip netns add`) rather than in a private one of its own."""
        self.root, self.netns = root, netns
        self.log = log
        self.writable_sysctl = writable_sysctl  # else /proc/sys is read-only, as LXC and most container hosts give it
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.pid = 0  # the container's PID 1, as seen from the host
        self.installed: subprocess.CompletedProcess[str] | None = None  # what `apt-get install` of tq printed

    def boot(self) -> float:
        """Start systemd in the container and wait until it is up; return seconds taken."""
        started = time.monotonic()
        env = dict(os.environ)
        env.pop("SYSTEMD_NSPAWN_API_VFS_WRITABLE", None)
        if self.writable_sysctl:
            env["SYSTEMD_NSPAWN_API_VFS_WRITABLE"] = "1"
        network = [f"--network-namespace-path=/run/netns/{self.netns}"] if self.netns else ["--private-network"]
        command = ["systemd-nspawn", *network, "--quiet", "-D", str(self.root), "-b"]
        if not Path("/run/systemd/system").exists():
            # No systemd on the host (CI here): no machined to register with, no scope to make.
            command[1:1] = ["--keep-unit", "--register=no"]
        with open(self.log, "ab") as log:
            self.nspawn = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                           stdout=log, stderr=subprocess.STDOUT)
        self.pid = self._wait_for_init(started)
        while time.monotonic() - started < BOOT_TIMEOUT and self.nspawn.poll() is None:
            state = self.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=BOOT_TIMEOUT)
            if state.stdout.strip() in ("running", "degraded"):
                return time.monotonic() - started
            time.sleep(0.2)
        raise TimeoutError(f"container did not come up (nspawn exit {self.nspawn.poll()}); see {self.log}")

    def _wait_for_init(self, started: float) -> int:
        assert self.nspawn is not None
        children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children")
        while time.monotonic() - started < BOOT_TIMEOUT:
            if self.nspawn.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited with {self.nspawn.returncode}; see {self.log}")
            for pid in children.read_text().split():
                comm = Path(f"/proc/{pid}/comm")
                if comm.exists() and comm.read_text().strip() == "systemd":
                    return int(pid)
            time.sleep(0.05)
        raise TimeoutError(f"no init process in the container; see {self.log}")

    def run(self, cmd: list[str] | str, *, check: bool = True, input: str | None = None,
            timeout: float = 120.0, user: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run cmd (argv, or a string for sh -c) inside the container as root or `user`."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        if user is not None:
            argv = ["runuser", "-u", user, "--", *argv]
        full = ["nsenter", "-t", str(self.pid), "-a", *CONTAINER_ENV, *argv]
        result = subprocess.run(full, input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{argv} exited {result.returncode}\n"
                                 f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        return result

    def put(self, source: Path, dest: str, mode: int = 0o644) -> str:
        """Copy a host file into the container (not under /tmp: that is a tmpfs inside)."""
        target = self.root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        target.chmod(mode)
        return dest

    def put_text(self, text: str, dest: str) -> str:
        target = self.root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return dest

    def reboot(self) -> float:
        """Reboot the container (nspawn exits 133) and boot it again; return seconds to up."""
        assert self.nspawn is not None
        self.run(["systemctl", "reboot"], check=False)
        code = self.nspawn.wait(timeout=BOOT_TIMEOUT)
        if code != REBOOT_EXIT:
            raise RuntimeError(f"expected nspawn to exit {REBOOT_EXIT} on reboot, got {code}")
        return self.boot()

    def stop(self) -> None:
        if self.nspawn is None or self.nspawn.poll() is not None:
            return
        self.run(["systemctl", "poweroff"], check=False, timeout=30)
        try:
            self.nspawn.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)  # init of a PID namespace: takes the whole container
            self.nspawn.wait(timeout=30)


def built_package() -> Path:
    """TQ_DEB, or the newest dist/tq_*.deb (`make deb`)."""
    found = [Path(os.environ["TQ_DEB"])] if os.environ.get("TQ_DEB") else sorted(
        (REPO / "dist").glob("tq_*.deb"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError("no package: run `make deb` (or set TQ_DEB)")
    return found[-1]


def install_package(box: Container) -> Container:
    """Install TQ_DEB, or the newest dist/tq_*.deb (`make deb`), with apt in the container."""
    package = built_package()
    deb = box.put(package, f"/root/{package.name}")
    box.installed = box.run(["apt-get", "install", "-y", deb], timeout=300)
    return box
