"""The training runtime: engine, precision, optimizers, schedulers, data, timers."""
