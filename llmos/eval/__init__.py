"""Evaluations: `llmos eval` scores assistants (assistant.py) on held-out conversations and tasks."""
