"""``pet-harness load``: the pet API under Locust load, with the operator's cost measured.

One run (:mod:`pet_harness.load.runner`) starts an embedded cluster tuned for load, puts the
operator under test on it (ours, the naive Kopf peer, or none for the raw ceiling where the load
client writes the status itself), runs ``loadtests/locustfile.py`` headless or with its web UI,
samples the operator's RSS and CPU, counts API requests from the API server's own metrics, checks
that every pet ended in the status the contract predicts, and writes a report folder.
"""
