"""The service core: a few parts with one job each behind one facade, ``Core``."""
