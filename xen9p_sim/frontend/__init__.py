"""Simulated guests' 9pfs frontends: Linux-like (`linux.py`), Mini-OS-like and Unikraft-like on its hooks."""
