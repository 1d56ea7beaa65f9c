"""The trading domain (R7): validation rules, positions and the account, sizing and risk,
broker adapters, performance metrics. Pure code; the services in :mod:`tradepipe.services`
drive it from events."""
