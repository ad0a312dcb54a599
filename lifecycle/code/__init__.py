"""Code experiments: the static stages of the code gate, the gate in order, the isolated
child that alone imports a candidate before approval, and the code change of an experiment
(a patch, its approval, install and undo). Imports the record and the lab's knowledge."""
