"""Moving Arrow data between processes: Flight clients and the reactive reader router."""
