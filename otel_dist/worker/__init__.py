"""Worker processes: Flight servers that run tasks with DataFusion and serve output buckets."""
