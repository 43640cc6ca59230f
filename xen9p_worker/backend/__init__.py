"""The host side of the 9P server: local export, security models, qid remapping."""
