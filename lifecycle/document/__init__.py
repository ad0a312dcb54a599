"""The record as a document: rendering it (Jinja), its sections and what review requires of
them, the commit an experiment makes (its files and drafted message) and the git operations
behind it. Imports the lab's knowledge; never a verb or the run."""
