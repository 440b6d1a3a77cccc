"""Fuzzing the Pet API against a live API server: strategies, an oracle written from the contract,
and the runners that compare the two (issue 8; docs/fuzzing.md)."""
