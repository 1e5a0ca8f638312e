"""The `modelplane` command: serve, train, export, list models, bring the platform up.

The top of the import graph: it may use every package of ours, none imports it. It runs each
service and training job as its own process (`python -m services.<name>`, `python -m
training.<job>`), the same entry points compose and Kubernetes run.
"""
