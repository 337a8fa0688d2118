"""End-to-end workflows (pre-train, fine-tune, ...): they wire data, models, objectives and the training engine."""
