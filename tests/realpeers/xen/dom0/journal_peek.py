"""Post-mortem of a stuck device, part two: every xen9p device-state segment in /dev/shm, read
without taking any lock: session, seqlock words, each ring's worker pid, kick/cancel words and
its journal records (what each ring has taken and not yet let out_cons pass). Run by main.sh."""
import os
import sys

from xen9p_worker.shared.device_state import DeviceState
from xen9p_worker.shared import journal as J
from xen9p_worker.shared import layout as L


def show(name: str) -> None:
    ds = DeviceState.attach(name)
    try:
        print(f"== {name}: export {ds.export} rings {ds.num_rings} msize {ds.session.msize} "
              f"version {ds.session.version!r} epoch {ds.session.epoch}")
        print(f"   fid seq {L.U64.unpack_from(ds.buf, L.H_FID_SEQ)[0]} "
              f"lock seq {L.U64.unpack_from(ds.buf, L.H_LOCK_SEQ)[0]} (odd = a writer inside)")
        for ring in range(ds.num_rings):
            j = ds.journal(ring)
            recs = j.records()
            print(f"   ring{ring}: worker pid {j.pid()} scans {j.scans()} kick {j.kick_requested()}/{j.kick_acked()} "
                  f"cancels waiting {j.cancels_waiting()}; {len(recs)}/{j.slots} records in use")
            for r in sorted(recs, key=lambda r: r.req_index):
                print(f"     slot {r.slot}: {J.STATE_NAMES.get(r.state, r.state)} type {r.mtype} tag {r.tag} "
                      f"req @{r.req_index:#x}+{r.req_size} reply @{r.reply_pos:#x}+{r.reply_len} "
                      f"stored {len(r.stored)}")
    finally:
        ds.close()


def main() -> int:
    names = sorted(n for n in os.listdir("/dev/shm") if n.startswith("xen9p-"))
    if not names:
        print("no xen9p device-state segments in /dev/shm")
    for n in names:
        try:
            show(n)
        except Exception as e:  # a post-mortem prints what it can
            print(f"== {n}: {type(e).__name__}: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
