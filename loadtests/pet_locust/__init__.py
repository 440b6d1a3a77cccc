"""Locust-side pieces of the pet load: API access, the reconcile-latency watch, users, shapes.

``loadtests/locustfile.py`` wires them into Locust; ``pet-harness load`` runs that file.
Nothing here imports the operator: the load predicts statuses from the contract itself.
"""
