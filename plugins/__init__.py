"""dcbench's built-in plugins (installed as the `dcbench_plugins` package)."""
