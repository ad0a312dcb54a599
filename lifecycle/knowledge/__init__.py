"""What the lab knows: its lessons, the notebook (INDEX.md), next-experiment proposals, the
preflight checks, the compute estimate, which experiment a new one builds on, and which runs
make up an experiment (its replicates and the lab's measured noise). The lowest room: it
imports nothing else of the lifecycle."""
