"""Sweeps: every (family, fold) run of an ensemble as one submitit job array (Slurm or this machine),
requeued on preemption and resumed from last.ckpt, then its OOF search. Imports ``inference`` and below."""
