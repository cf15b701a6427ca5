"""TensorBoard files: event-file framing and reading, the TensorBoard sink, hparams records."""
