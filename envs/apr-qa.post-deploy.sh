#!/bin/sh
# Runs in envs/apr-qa.yaml's environment once Snakemake has created it (a copy of this script, under
# .snakemake/conda/): torch's CPU build, which the lock leaves out (pinned as in the Makefile), and this
# package, editable, from the repository ($APR_QA_ROOT, set by rules/common.smk).
set -eu
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet --no-deps --no-build-isolation -e "$APR_QA_ROOT"
python -m pip check
