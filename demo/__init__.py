"""The `make demo` walkthrough: starts the servers and runs each section through the SDK."""
