"""Operator tooling for prepost-backup: the CLI and local mode. Not deployed."""
