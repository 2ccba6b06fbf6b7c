"""Fault-injection helpers for the fault tests: a TCP proxy that can be cut, crash scripts."""
