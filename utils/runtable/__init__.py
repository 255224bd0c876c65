"""The run table (`results/resultTable.db`, a deepboard 0.3 ResultTable): the only code that touches it.

One job per module:
- schema.py    creating the file (the only import of deepboard), opening it checked, the template's side table
- identity.py  what makes two launches the same run
- registry.py  registering, refusing and resuming runs (RunTable)
- run.py       the logging API a running experiment calls (Run)
- liveness.py  whether a recorded process is still alive
- readers.py   read-only access: recorded runs, and pandas frames for notebooks
"""
