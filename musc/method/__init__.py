"""The method: arrays in, arrays out. No files, no Prefect.

lnamd (stage aggregate), msm + screening (stage score), maps and rscin (stage classify), metrics
(stage evaluate), checks (how many images the method needs), pipeline (all of it in one call).
docs/METHOD.md describes what each computes.
"""
