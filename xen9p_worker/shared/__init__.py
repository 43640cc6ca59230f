"""The per-device state every ring worker of a device shares, laid out in one shared-memory segment.

device_state.DeviceState composes the pieces: layout, mutex, fid table, lock table, journal.
"""
