"""Side-by-side benchmarks of configstore against etcd (issue 5, parts 3 and 4).

`python -m benchmarks.compare` (`./dev compare`) starts a fresh 3-node configstore cluster
and a 3-member etcd cluster on this machine, drives both through the same Python HTTP
client (`benchmarks.http`) and prints one table with both systems and their ratio.

    stats    percentiles and medians
    http     the HTTP client and the multi-process load driver, shared by both systems
    etcd     a 3-member etcd cluster on loopback and its HTTP/JSON gateway requests
    ours     a fresh configstore cluster, its REST API requests and its cost counters
    report   rows, ratios, goals and the table (terminal and docs/benchmarks.md)
    compare  the command
"""
