"""Hardware checks: what this machine is, what a config needs on it, and the largest micro-batch that fits.

    report.py    the environment: versions, GPUs, CPU, RAM, disk, distributed launch
    memory.py    peak memory of a block of work (CUDA allocator peak; CPU resident-set growth)
    probe.py     real training steps of a config: memory by micro-batch, the fit, speed, predictions
    verdicts.py  PASS / WARN / FAIL lines with reason and fix
    doctor.py    all of it for `difftrain doctor`

Import the submodules directly: the trainer uses memory.py, and probe.py uses the trainer.
"""
