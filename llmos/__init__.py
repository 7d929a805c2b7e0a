"""llmos: a hackable LLM stack, from corpus to chat."""
__version__ = "0.1.0"
