"""Boots the lab (Xen 4.17 + PV dom0 under QEMU/TCG) once or twice and watches it on the wall clock.
Serial lines are time-stamped into a log; a silent machine is a stall, retried once and reported."""
from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

# The CPU model QEMU/TCG shows the nested Xen. With `max` (QEMU 7.2) dom0 and domU programs
# segfaulted at random, glibc reported corrupted heaps, pyzmq raised SystemError, freshly started
# Pythons crashed while compiling, time.monotonic() stepped 141 s back and the whole machine froze
# idle (Xen in HLT) -- with or without the AVX family (runs 5-8). With `Nehalem` (no XSAVE, AVX,
# PCID/INVPCID, FSGSBASE, SMEP/SMAP or TSC-deadline timer) run 9 passed every stage with none of
# that. XEN9P_QEMU_CPU overrides.
QEMU_CPU = os.environ.get("XEN9P_QEMU_CPU", "Nehalem")
XEN_ARGS = ("console=com1 com1=115200,8n1 dom0_mem={mem},max:{mem} dom0_max_vcpus=1 "
            "loglvl=all guest_loglvl=all smap=0")
DOM0_ARGS = "console=hvc0 earlyprintk=xen panic=-1 loglevel=6 xen9pinit=/xen9p/dom0-init.sh"
# Lines worth echoing live; everything goes to the serial log.
# What run.sh puts in the results share before boot (dom0 reads them); kept across a retry.
INPUTS = ("domu", "cases", "lab-env")
ECHO_PREFIXES = ("DOM0[", "LAB[", "LOADER:", "P9T ", "CHECK ", "(XEN) Panic", "Kernel panic")


def qemu_argv(images: Path, src: Path, results: Path, monitor: Path, mem_mb: int, extra: list[str]) -> list[str]:
    return [
        "qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", QEMU_CPU, "-smp", "1", "-m", "4G",
        "-display", "none", "-no-reboot", "-nic", "none",
        "-monitor", f"unix:{monitor},server=on,wait=off",
        "-serial", "stdio",
        "-kernel", str(images / "xen.elf"), "-append", XEN_ARGS.format(mem=f"{mem_mb}M"),
        "-initrd", f"{images / 'vmlinuz'} {DOM0_ARGS},{images / 'loader.cpio.gz'}",
        # snapshot=on: the dom0 disk is pristine on every boot.
        "-drive", f"file={images / 'dom0.ext4'},if=virtio,format=raw,cache=unsafe,snapshot=on",
        "-virtfs", f"local,path={src},mount_tag=src,security_model=none,readonly=on,id=src",
        "-virtfs", f"local,path={results},mount_tag=results,security_model=none,id=results",
        *extra,
    ]


def monitor_dump(sock_path: Path, commands: list[str], timeout: float = 10.0) -> str:
    """Ask QEMU's human monitor for a post-mortem; best effort, never raises."""
    out = []
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(str(sock_path))
            for cmd in commands:
                s.sendall(cmd.encode() + b"\n")
                deadline = time.monotonic() + timeout
                buf = b""
                while time.monotonic() < deadline and not buf.rstrip().endswith(b"(qemu)"):
                    try:
                        chunk = s.recv(65536)
                    except socket.timeout:
                        break
                    if not chunk:
                        break
                    buf += chunk
                out.append(f"== {cmd}\n{buf.decode(errors='replace')}")
    except OSError as e:
        out.append(f"monitor unreachable: {e}")
    return "\n".join(out)


def boot_once(argv: list[str], log_path: Path, monitor: Path, timeout: float, stall: float,
              heartbeat: float = 30.0) -> dict:
    """Run QEMU to completion; outcome is 'ok' (dom0 powered off), 'stall', 'timeout' or 'crash'."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=open(str(log_path) + ".stderr", "wb"))
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    last_out = t0
    next_hb = t0 + heartbeat
    nlines = 0
    buf = b""
    outcome = None
    saw_poweroff = False
    with open(log_path, "w") as log:
        while True:
            now = time.monotonic()
            if now - t0 > timeout:
                outcome = "timeout"
                break
            if now - last_out > stall:
                outcome = "stall"
                break
            if now >= next_hb:
                next_hb = now + heartbeat
                print(f"[boot +{now - t0:6.1f}s] heartbeat: {nlines} serial lines, last {now - last_out:.0f}s ago",
                      flush=True)
            if not sel.select(timeout=1.0):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            last_out = time.monotonic()
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace").rstrip("\r")
                nlines += 1
                log.write(f"[{last_out - t0:7.2f}] {line}\n")
                if "DOM0-POWEROFF" in line:
                    saw_poweroff = True
                if line.startswith(ECHO_PREFIXES) or "DOM0[" in line:
                    print(f"[boot +{last_out - t0:6.1f}s] {line}", flush=True)
            log.flush()
        if outcome in ("stall", "timeout"):
            (log_path.parent / f"{log_path.stem}-monitor.txt").write_text(
                monitor_dump(monitor, ["info status", "info registers", "info cpus"]))
            proc.kill()
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    if outcome is None:
        outcome = "ok" if saw_poweroff else "crash"
    return {"outcome": outcome, "qemu_rc": rc, "wall_s": round(time.monotonic() - t0, 1),
            "serial_lines": nlines, "serial_log": str(log_path)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--src", type=Path, required=True, help="checkout shared read-only as tag src")
    ap.add_argument("--results", type=Path, required=True, help="shared read-write as tag results")
    ap.add_argument("--timeout", type=float, default=1500.0, help="wall-clock seconds per boot")
    ap.add_argument("--stall", type=float, default=240.0, help="seconds of serial silence = stall")
    ap.add_argument("--retries", type=int, default=1)
    ap.add_argument("--dom0-mem", type=int, default=2048)
    ap.add_argument("--qemu-extra", default="")
    a = ap.parse_args(argv)
    attempts = []
    for attempt in range(1, a.retries + 2):
        if attempt > 1:
            # Keep the stalled attempt's evidence beside the retry's; carry the inputs over.
            old = Path(str(a.results) + f".attempt{attempt - 1}")
            shutil.move(str(a.results), str(old))
            a.results.mkdir(parents=True)
            for name in INPUTS:
                if (old / name).is_dir():
                    shutil.copytree(old / name, a.results / name)
                elif (old / name).exists():
                    shutil.copy2(old / name, a.results / name)
        a.results.mkdir(parents=True, exist_ok=True)
        mon = Path(f"/tmp/xen9p-qemu-mon-{os.getpid()}.sock")
        log_path = a.results.parent / f"serial-attempt{attempt}.log"
        print(f"[boot] attempt {attempt}: serial log {log_path}, monitor {mon}", flush=True)
        r = boot_once(qemu_argv(a.images, a.src, a.results, mon, a.dom0_mem, a.qemu_extra.split()),
                      log_path, mon, a.timeout, a.stall)
        r["attempt"] = attempt
        attempts.append(r)
        print(f"[boot] attempt {attempt}: {r['outcome']} after {r['wall_s']}s (qemu rc {r['qemu_rc']})", flush=True)
        if r["outcome"] == "ok":
            break
        if r["outcome"] == "crash":
            break  # a crash is a result, not a flake: do not paper over it
    (a.results.parent / "boot.json").write_text(json.dumps(attempts, indent=1))
    return 0 if attempts[-1]["outcome"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
