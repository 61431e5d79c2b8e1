"""Small shared utilities (logging, memory)."""
