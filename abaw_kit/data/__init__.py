"""Reading the Aff-Wild2 release (or the demo) and the prepared face store."""
