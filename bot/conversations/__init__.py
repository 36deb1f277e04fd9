"""Conversations as stored: events, their state, the stores and their migrations, locks, retention, search."""
