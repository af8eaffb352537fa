"""Experiment configurations (get_config() functions read by experiments/ launch scripts)."""
