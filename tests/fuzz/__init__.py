"""Fuzzing of the NRI wire input: targets and oracles (targets.py), seeds (corpus.py,
capture.py), engines (engines.py) and the command (``python -m tests.fuzz``).

Nothing here imports nri_plugin at package import: targets.py must come first when
atheris instruments our modules.
"""
