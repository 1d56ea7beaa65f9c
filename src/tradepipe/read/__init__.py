"""The read side: stores built from events (the audit trail now; projections later)."""
