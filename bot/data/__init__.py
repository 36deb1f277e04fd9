"""Training data: load and validate `training_data/`, compile it into fine-tune data."""
