"""Scheduled ingestion and retraining (APScheduler) and the `nucleograph scheduler`/`jobs` commands."""
