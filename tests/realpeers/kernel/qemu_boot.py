"""Boots the test guest under QEMU/TCG with the server's Unix socket on a virtio-serial port.
Streams the serial console to a timestamped log and enforces a wall-clock deadline."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .guest_image import GuestImage, run_overlay

QBOOT = Path("/usr/share/qemu/qboot.rom")
PORT_NAME = "org.xen9p.sut"
# After @@DONE the guest powers off at once; if QEMU lingers, it is stuck, not busy.
POWEROFF_GRACE_S = 20.0


@dataclass
class BootResult:
    log_path: Path
    lines: list[tuple[float, str]] = field(default_factory=list)
    returncode: int | None = None
    timed_out: bool = False
    wall_s: float = 0.0


def qemu_binary() -> str | None:
    return shutil.which("qemu-system-x86_64")


def qemu_command(image: GuestImage, initrd: Path, socket_path: Path, hostroot: bool, mem_mb: int) -> list[str]:
    cmd = [qemu_binary() or "qemu-system-x86_64",
           # /dev/kvm on these hosts is PVM and cannot run ordinary guests; one vCPU is faster under TCG.
           "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", str(mem_mb),
           "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
           "-serial", "stdio", "-no-reboot",
           "-kernel", str(image.kernel), "-initrd", str(initrd),
           # no_timer_check: under TCG on a busy host the IO-APIC timer check can miss its ticks and
           # panic ("IO-APIC + timer doesn't work!"), seen booting 6.12 beside other QEMU runs.
           "-append", "console=ttyS0 quiet loglevel=3 panic=-1 no_timer_check rdinit=/init",
           "-device", "virtio-serial-pci,id=vs0",
           "-chardev", f"socket,id=sut,path={socket_path}",
           "-device", f"virtserialport,bus=vs0.0,chardev=sut,name={PORT_NAME}"]
    if QBOOT.exists() and image.kernel.name == "vmlinux":
        cmd[1:1] = ["-bios", str(QBOOT)]  # qboot + PVH entry boots in about half the time of SeaBIOS
    if hostroot:
        cmd += ["-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
                           "multidevs=remap,id=hostroot"]
    return cmd


def boot_guest(image: GuestImage, socket_path: Path, run_conf: dict[str, str], log_path: Path,
               timeout_s: float, hostroot: bool = True, mem_mb: int = 1024) -> BootResult:
    """Run the guest to completion (or to the deadline, then kill QEMU); never raises on guest failure."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    initrd = log_path.with_suffix(".initrd")
    initrd.write_bytes(image.initrd.read_bytes() + run_overlay(run_conf))
    res = BootResult(log_path=log_path)
    done = threading.Event()
    t0 = time.monotonic()
    cmd = qemu_command(image, initrd, socket_path, hostroot, mem_mb)
    with open(log_path, "w", encoding="utf-8", errors="replace") as log:
        log.write(f"# {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)

        def pump() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                t = time.monotonic() - t0
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                res.lines.append((t, line))
                log.write(f"[{t:8.2f}] {line}\n")
                log.flush()
                if "@@DONE " in line:
                    done.set()

        reader = threading.Thread(target=pump, name="qemu-console", daemon=True)
        reader.start()
        deadline = t0 + timeout_s
        try:
            while proc.poll() is None:
                now = time.monotonic()
                if now >= deadline:
                    res.timed_out = True
                    break
                if done.wait(min(1.0, deadline - now)):
                    try:
                        proc.wait(timeout=POWEROFF_GRACE_S)
                    except subprocess.TimeoutExpired:
                        log.write("# QEMU did not exit after @@DONE; killing it\n")
                    break
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            res.returncode = proc.wait()
            reader.join(timeout=5)
            res.wall_s = time.monotonic() - t0
            if res.timed_out:
                log.write(f"# TIMEOUT after {timeout_s:.0f}s: QEMU killed\n")
            log.write(f"# qemu rc={res.returncode} wall={res.wall_s:.1f}s\n")
    initrd.unlink(missing_ok=True)
    return res
