"""Consensus: the pure Multi-Paxos core (consensus.paxos) and its runtime (storage, transport)."""
