"""The label files: `rows` parses, checks and merges their rows and applies the decisions to a
manifest (the stages read it); `locked` reads, changes and writes data/labels/decisions.csv under
one inter-process lock (every tool that writes the file goes through it)."""
