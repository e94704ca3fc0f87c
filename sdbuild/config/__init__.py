"""Recipe schema (structured configs) and its parts."""
