"""Reading HotSpot from outside: VMStructs tables, the per-version layout, code cache, methods, frames."""
