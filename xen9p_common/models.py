"""The security models' names, as operators write them (QEMU's fsdev spellings): one home for the list.

xen9p_worker/backend/models.py maps each name to its implementation; the daemon's policy, the
device's xenstore validation, the worker's and xen9psim's command lines take their choices from here.
"mapped" is QEMU's older name for "mapped-xattr".
"""
SECURITY_MODELS = ("none", "passthrough", "mapped-xattr", "mapped", "mapped-file")
