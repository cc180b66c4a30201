"""Continual learning: experience streams, replay buffers, and forgetting metrics."""
