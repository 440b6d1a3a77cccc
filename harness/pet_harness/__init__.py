"""The Pet operator's end-to-end harness: real control planes, processes, faults, measurements."""
