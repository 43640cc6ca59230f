"""ring: the real path, sim frontend rings -> ring worker processes -> local directory, 1..8 rings.

(filled in when the ring worker lands)
"""
NAME = "ring"


def missing(ctx):
    return "ring worker not landed yet"


def run(ctx):
    pass
