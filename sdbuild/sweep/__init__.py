"""Hydra multirun sweeps: each variant built in a supervised child process, a report at the end."""
