"""The run: the pipeline a launched experiment runs (train, evaluate, analyse), how it is
launched (a detached process, GPU slots and their queue, a Slurm job) and the run script
all of them render. Imports the record and the lab's knowledge; never a verb."""
