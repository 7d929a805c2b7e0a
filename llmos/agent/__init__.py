"""The LLM OS: the model as the kernel of a system with tools, memory and peripherals."""
