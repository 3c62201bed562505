"""Studies: arms of curate -> train -> answer -> judge, run one after another or on a
Ray cluster (TPU slices, GPUs, hosts), and compared.

Command line: `python -m lima_jax.experiment run|report` (the studies: configs/experiments.py).
Modules: `study` (a study's steps, including arms that answer a given model without
training and arms that answer prompts of their own), `prepare` (the prepare steps run once
before any arm, and the `{NAME}` placeholders through which other fields name them),
`manifest` (each step's identity, the hash of its inputs, and the record that lets a rerun do
only what is missing), `local` (beginning and recording a step, and the local runner),
`ray_executor` (the same steps on a Ray cluster, with `ray_cluster`: reaching it and
checking it can hold the study, `placement`: where each step runs, `ray_tasks`: what runs on
a node, and `ray_table`: what it shows) and `report` (arm x metric
with 95% intervals, paired differences; its PNG figures in `report_figures`). Each step is
one of the project's own commands, run as a subprocess. How to run one: docs/studies.md.
"""
