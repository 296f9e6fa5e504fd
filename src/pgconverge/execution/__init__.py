"""Everything that touches a connection while migrating: sessions, retries, the runner."""
