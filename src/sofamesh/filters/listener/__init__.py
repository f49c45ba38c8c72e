"""Listener filters: they look at a connection's first bytes before a filter chain is
chosen. The Server runs them in proxy/listener_chains.py (one selection per connection);
each module here registers one by name so config validation knows it."""
