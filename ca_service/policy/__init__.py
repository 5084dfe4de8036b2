"""What may be issued, and who may do what: pure decisions that never touch keys or SQL."""
