"""Reproduction report: run the paper's experiments (``reproduce``), measure Figure 3, write REPORT.md.

Modules: ``paper`` (the paper's numbers), ``plan`` (runs per profile), ``reproduce`` (orchestration, the
``make reproduce`` entry point), ``runs`` (reading run outputs), ``tables`` / ``figures`` / ``figure3`` /
``writer`` (the report), ``sweep`` (Hydra callback reporting every multirun job).
"""
