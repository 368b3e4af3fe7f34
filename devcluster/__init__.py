"""Tooling that runs configstore clusters on one machine, for development, tests and benchmarks.

`localcluster` (N real nodes as processes of this machine), `embedded` (PostgreSQL and Redis
without servers), `bench` (the Paxos core's own speed) and the management commands
`runcluster` and `bench`. A production node needs none of it: the runtime (consensus/) and
the product (configstore/) never import this package (tests/test_layering.py); it may import
both.
"""
