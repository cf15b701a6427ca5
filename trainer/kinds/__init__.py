"""Every kind a spec can name (data, models, losses, metrics, optimizers, schedules), in one registry."""
