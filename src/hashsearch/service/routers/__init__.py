"""Routers split by concern: search, images (records, files, thumbnails, add/remove), admin (stats, health, jobs)."""
