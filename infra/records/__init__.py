"""The documents this project persists (endpoint record, build manifest) and their versions."""
