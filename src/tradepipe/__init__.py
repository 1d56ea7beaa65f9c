"""tradepipe: an event-driven AI trading pipeline."""

import logging

# A library logs; the application decides where to. Without this, Python's last-resort handler
# would print every notifier warning (each refused order) to stderr of any program using us.
logging.getLogger("tradepipe").addHandler(logging.NullHandler())
