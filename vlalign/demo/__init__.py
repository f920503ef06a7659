"""`vlalign demo`: the offline end-to-end comparison of the objectives.

presets.py (sizes, costs, rates) and recipes.py (the runs, as data) import nothing heavy; prestep.py,
steps.py and query.py do the work; run.py drives it all (`run_demo`).
"""
