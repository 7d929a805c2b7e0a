"""The inference layer: sampling settings, the continuous-batching engine and scheduler, constraints, tool calls."""
