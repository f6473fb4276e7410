"""Coverage-guided fuzzing of every parser that sees untrusted bytes (atheris).

`fuzz/targets.py` holds the targets, `fuzz/run.py` runs them (`python -m fuzz.run`),
`fuzz/seed.py` regenerates the committed seed corpus under `fuzz/corpus/`. See the
Fuzzing section of docs/testing.md.
"""
