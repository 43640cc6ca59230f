"""One ring (or one socket connection) served by the 9P2000.L server core."""
