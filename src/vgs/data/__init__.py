"""Data sets: the manifest format, builders (flickr8k, facc, places, spokencoco, scenes) and loaders."""
