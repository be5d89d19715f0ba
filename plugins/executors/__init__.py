"""Built-in sweep executors."""
