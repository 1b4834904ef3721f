"""Sweeps (``severstal sweep``): every (family, fold) run of an ensemble as one submitit job array
(Slurm or this machine), requeued on preemption and resumed from last.ckpt, then its OOF search.

``availability`` checks the executor is installed; ``jobs`` holds the training and OOF jobs;
``plan`` checks a sweep and decides what each run does; ``resources`` fills in each job's resources;
``slurm`` and ``local`` run a plan (imports run that way: the executors import ``plan``,
``resources`` and ``outcomes``, which reads how a job ended; none imports an executor). Imports
``inference`` and below."""
