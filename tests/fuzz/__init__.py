"""Coverage-guided fuzzing of everything a guest controls: `python -m tests.fuzz --help`.

Targets (tests/fuzz/targets/): codec, ring, dispatch, xenstore. Findings worth keeping live in
tests/fuzz/regressions/<target>/ and are replayed by the default test suite.
"""
